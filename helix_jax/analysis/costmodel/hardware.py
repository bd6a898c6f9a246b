"""Hardware profiles that price FLOPs, memory traffic and collectives; built-in or from a file.

All bandwidths are per GPU and per direction, in bytes/s; latencies are per ring step, in seconds.
Device (mesh position) p sits on node p // gpus_per_node: lay mesh axes out so that the axis
meant to stay inside a node is the fastest-varying one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

from helix_jax.files import input_file


@dataclass(frozen=True)
class Hardware:
    """One GPU type in one cluster. `flops_per_s` is the achieved matrix rate used for pricing.

    The fields after `notes` are optional refinements, each 0 or empty when a profile has no
    measurement for it (the simpler model then applies, see docs/cost-model.md):
      sm_count, mm_tile_m, mm_tile_n   GEMM tile x wave quantization (analysis/costmodel/roofline.py)
      attention_flops_per_s            achieved rate of a fused attention kernel
      allreduce_busbw                  measured all-reduce bus bandwidth inside a node, as
                                       ((bytes, busbw bytes/s), ...) by message size
      busbw_max_other                  the bus bandwidth cap of the other collectives in a node
      latency_small_s                  the time of a small collective (the curve's floor)
      nic_bytes_per_s                  achieved per-GPU network rate between nodes
      fp8_flops_per_s                  achieved rate of FP8 x FP8 matmuls (W8A8 under
                                       `--weights float8`); 0 where the GPU has no FP8 tensor
                                       cores (A100): those matmuls then run at flops_per_s
      sources                          field name -> where its value comes from
    """

    name: str
    flops_per_s: float
    peak_flops_per_s: float
    hbm_bytes_per_s: float
    nvlink_bytes_per_s: float
    ib_bytes_per_s: float
    gpus_per_node: int
    hbm_capacity_bytes: float
    latency_nvlink_s: float
    latency_ib_s: float
    notes: str = ""
    sm_count: int = 0
    mm_tile_m: int = 0
    mm_tile_n: int = 0
    attention_flops_per_s: float = 0.0
    allreduce_busbw: tuple[tuple[float, float], ...] = ()
    busbw_max_other: float = 0.0
    latency_small_s: float = 0.0
    nic_bytes_per_s: float = 0.0
    fp8_flops_per_s: float = 0.0
    sources: dict[str, str] = dataclasses.field(default_factory=dict)

    def __hash__(self) -> int:
        return hash(self.name)

    @property
    def measured_links(self) -> bool:
        """Whether collectives are priced from measured curves (hierarchically across nodes)."""
        return bool(self.allreduce_busbw and self.nic_bytes_per_s)

    def link(self, crosses_nodes: bool) -> tuple[float, float]:
        """(bytes/s per direction, latency per step) of NVLink, or of InfiniBand across nodes."""
        if crosses_nodes:
            return self.ib_bytes_per_s, self.latency_ib_s
        return self.nvlink_bytes_per_s, self.latency_nvlink_s


# H100 SXM datasheet (NVIDIA H100 Tensor Core GPU datasheet, "H100 SXM" column): FP8 Tensor Core
# 3,958 TFLOP/s with sparsity, i.e. 1,979 dense, against 989 dense for BF16/FP16 (1,979 with
# sparsity). The achieved FP8 rate is taken at the fraction of its peak that the profile's
# achieved 16-bit rate reaches (no FP8 measurement is held here): flops_per_s x 1979 / 989.
H100_FP8_DENSE_PEAK = 1979e12
H100_BF16_DENSE_PEAK = 989e12
_FP8_SOURCE = ("H100 SXM datasheet: FP8 Tensor Core 3,958 TFLOP/s with sparsity = 1,979 dense, "
               "2.0x the 989 dense bf16; achieved at the fraction of peak of this profile's "
               "16-bit rate (flops_per_s x 1979 / 989; an assumption, no FP8 GEMM measured)")


def _h100_fp8(flops_per_s: float) -> float:
    """The achieved FP8 rate of an H100 profile whose achieved 16-bit rate is `flops_per_s`."""
    return flops_per_s * H100_FP8_DENSE_PEAK / H100_BF16_DENSE_PEAK


_LATENCY_NOTE = ("Latencies (3 us per NVLink step, 10 us per InfiniBand step) are assumed orders "
                 "of magnitude for NCCL ring steps, not measurements.")

HARDWARE: dict[str, Hardware] = {
    "h100-paper": Hardware(
        name="h100-paper", flops_per_s=800e12, peak_flops_per_s=989e12, hbm_bytes_per_s=3.0e12,
        nvlink_bytes_per_s=200e9, ib_bytes_per_s=200e9, gpus_per_node=4, hbm_capacity_bytes=80e9,
        latency_nvlink_s=3e-6, latency_ib_s=10e-6, fp8_flops_per_s=_h100_fp8(800e12),
        sources={"fp8_flops_per_s": _FP8_SOURCE},
        notes=("The paper's cluster as the paper describes it: 4 nodes x 4 H100 80GB. NVLink "
               "'400 GB/s bidirectional' is read as the sum of both directions: 200 GB/s per GPU "
               "per direction. InfiniBand '200 GB/s per link' is read as per GPU per direction "
               "(200e9), as stated; note a 400 Gb/s NDR NIC gives 50 GB/s, so this is generous. "
               "Compute: 800 TFLOP/s achieved (measured on large bf16 products on one H100), "
               "989 peak dense fp16; HBM 3.0 TB/s achieved; capacity 80e9 bytes (nominal 80 GB). "
               + _LATENCY_NOTE)),
    "h100-sxm": Hardware(
        name="h100-sxm", flops_per_s=800e12, peak_flops_per_s=989e12, hbm_bytes_per_s=3.35e12,
        nvlink_bytes_per_s=450e9, ib_bytes_per_s=50e9, gpus_per_node=4, hbm_capacity_bytes=80e9,
        latency_nvlink_s=3e-6, latency_ib_s=10e-6, fp8_flops_per_s=_h100_fp8(800e12),
        sources={"fp8_flops_per_s": _FP8_SOURCE},
        notes=("H100 SXM datasheet figures on the paper's cluster shape (4 nodes x 4 GPUs): "
               "989 TFLOP/s peak dense fp16/bf16, 800 achieved; HBM3 3.35 TB/s peak; NVLink 4 "
               "900 GB/s total = 450 GB/s per direction; one 400 Gb/s InfiniBand NIC per GPU = "
               "50 GB/s per direction. A DGX H100 has 8 GPUs per node: load a file with "
               "gpus_per_node = 8 for that. " + _LATENCY_NOTE)),
    "dgx-h100": Hardware(
        name="dgx-h100", flops_per_s=792.1e12, peak_flops_per_s=989e12, hbm_bytes_per_s=3.0e12,
        nvlink_bytes_per_s=370e9, ib_bytes_per_s=50e9, gpus_per_node=8, hbm_capacity_bytes=80e9,
        latency_nvlink_s=3e-6, latency_ib_s=10e-6,
        notes="DGX H100: 8 x H100 SXM 80 GB per node on NVSwitch, 8 x 400 Gb/s NICs per node. "
              "Collectives from nccl-tests measurements, hierarchical across nodes.",
        sm_count=132, mm_tile_m=128, mm_tile_n=256, attention_flops_per_s=600e12,
        allreduce_busbw=((1 << 20, 67e9), (16 << 20, 237e9), (64 << 20, 362e9),
                         (128 << 20, 401e9), (1 << 30, 466e9), (8 << 30, 480e9)),
        busbw_max_other=370e9, latency_small_s=15e-6, nic_bytes_per_s=40e9,
        fp8_flops_per_s=_h100_fp8(792.1e12),
        sources={
            "fp8_flops_per_s": _FP8_SOURCE,
            "flops_per_s": "MAMF (maximum achievable matmul FLOPS) of H100 SXM, bf16: 792.1 "
                           "TFLOP/s (S. Bekman, ml-engineering, compute/accelerator, MAMF table)",
            "peak_flops_per_s": "H100 SXM datasheet: 989 TFLOP/s dense bf16/fp16",
            "hbm_bytes_per_s": "measured about 3.0 TB/s of the 3.35 TB/s HBM3 datasheet peak",
            "sm_count": "H100 SXM: 132 SMs (NVIDIA Hopper architecture whitepaper)",
            "mm_tile_m": "GEMM tile/wave quantization: NVIDIA Matrix Multiplication Background "
                         "User's Guide (tile sizes such as 128x256 on Hopper)",
            "attention_flops_per_s": "FlashAttention-3 (Shah et al. 2024): 600+ TFLOP/s bf16 "
                                     "forward on H100 at head dim 128",
            "allreduce_busbw": "nccl-tests all_reduce_perf on one DGX H100 node (NVIDIA "
                               "dgxc-benchmarking sample output): 67 GB/s at 1 MiB, 237 at 16 "
                               "MiB, 362 at 64 MiB, 401 at 128 MiB, 466 at 1 GiB, ~480 at 8 GiB",
            "busbw_max_other": "NCCL effective NVLink bandwidth ~370 GB/s without NVLink SHARP "
                               "(NCCL maintainer, NVIDIA/nccl-tests issue 212)",
            "latency_small_s": "nccl-tests small-message all_reduce on DGX H100: 13-17 us",
            "nic_bytes_per_s": "one 400 Gb/s ConnectX-7 per GPU = 50 GB/s; about 36-45 GB/s "
                               "achieved point to point",
        }),
    "dgx-a100": Hardware(
        name="dgx-a100", flops_per_s=267.9e12, peak_flops_per_s=312e12, hbm_bytes_per_s=1.8e12,
        nvlink_bytes_per_s=230e9, ib_bytes_per_s=25e9, gpus_per_node=8, hbm_capacity_bytes=80e9,
        latency_nvlink_s=3e-6, latency_ib_s=10e-6,
        notes="DGX A100: 8 x A100 SXM 80 GB per node on NVSwitch, 8 x 200 Gb/s HDR per node. "
              "Collectives from nccl-tests measurements, hierarchical across nodes.",
        sm_count=108, mm_tile_m=256, mm_tile_n=128, attention_flops_per_s=190e12,
        allreduce_busbw=((1 << 20, 57.4e9), (16 << 20, 176.6e9), (64 << 20, 197.1e9),
                         (128 << 20, 201.0e9), (1 << 30, 204.6e9), (8 << 30, 204.9e9)),
        busbw_max_other=200e9, latency_small_s=10e-6, nic_bytes_per_s=22e9,
        fp8_flops_per_s=0.0,
        sources={
            "fp8_flops_per_s": "none: the A100 has no FP8 Tensor Cores (its datasheet lists FP64, "
                               "TF32, BF16/FP16 and INT8 Tensor Core rates; FP8 came with "
                               "Hopper): float8 matmuls run at the 16-bit rate",
            "flops_per_s": "MAMF of A100 SXM, bf16: 267.9 TFLOP/s (S. Bekman, ml-engineering, "
                           "compute/accelerator, MAMF table)",
            "peak_flops_per_s": "A100 SXM datasheet: 312 TFLOP/s dense bf16/fp16",
            "hbm_bytes_per_s": "about 90% of the 2.039 TB/s HBM2e datasheet peak (the measured "
                               "fraction of the H100 figure, 3.0 of 3.35)",
            "sm_count": "A100: 108 SMs (NVIDIA Ampere architecture whitepaper)",
            "mm_tile_m": "NVIDIA Matrix Multiplication Background User's Guide: 256x128 tiles "
                         "on A100's 108 SMs in its quantization examples",
            "attention_flops_per_s": "FlashAttention-2 (Dao 2023): up to ~190 TFLOP/s forward + "
                                     "backward on A100 at head dim 128",
            "allreduce_busbw": "nccl-tests all_reduce_perf on 8 x A100 SXM 80 GB with NVSwitch: "
                               "~200 GB/s busbw at 1 GiB (NVIDIA/nccl-tests issue 149); other "
                               "sizes from t = 23 us + 2(n-1)/n V / 205 GB/s (an assumption: the "
                               "DGX H100 curve's effective latency at 1 MiB)",
            "busbw_max_other": "ring bus bandwidth of NVLink 3 (about 200 GB/s measured)",
            "latency_small_s": "nccl-tests small all_reduce on A100 SXM: ~10 us (NVIDIA/nccl "
                               "issue 583)",
            "nic_bytes_per_s": "one 200 Gb/s HDR per GPU = 25 GB/s; ~85 GB/s per 4 HDR measured "
                               "across A100 nodes (NVIDIA/nccl-tests issue 119) = ~21-24 per GPU",
        }),
}

# DGX H200: the H100's Hopper chip (same SMs, clocks, matrix and attention rates) with 141 GB of
# HBM3e at 4.8 TB/s, in the DGX H100's chassis (the same NVSwitch and eight 400 Gb/s NICs): only
# the memory fields differ from dgx-h100.
_H100 = HARDWARE["dgx-h100"]
HARDWARE["dgx-h200"] = dataclasses.replace(
    _H100, name="dgx-h200", hbm_bytes_per_s=4.3e12, hbm_capacity_bytes=141e9,
    notes="DGX H200: 8 x H200 SXM 141 GB per node on NVSwitch, 8 x 400 Gb/s NICs per node; "
          "the DGX H100's chip, switches and NICs with HBM3e.",
    sources={**_H100.sources,
             "hbm_bytes_per_s": "about 90% of the 4.8 TB/s HBM3e datasheet peak (the measured "
                                "fraction of the H100 figure, 3.0 of 3.35); a device-to-device "
                                "copy on one H200 measured about 4.3 TB/s (2026-11), a jax "
                                "elementwise kernel 3.74 TB/s (results/gpu_kernels.md)",
             "hbm_capacity_bytes": "H200 SXM datasheet: 141 GB HBM3e at 4.8 TB/s",
             "same_as_dgx_h100": "DGX H200 datasheet: the same 4th-generation NVSwitch (900 GB/s "
                                 "NVLink per GPU) and 8 x 400 Gb/s ConnectX-7 as DGX H100; "
                                 "the H200 is the H100's GH100 chip (same dense bf16 peak)"})

_FIELDS = {f.name: f for f in dataclasses.fields(Hardware)}
_IGNORED = {"measurements"}  # what `helix calibrate` keeps beside the profile, for the reader
_OPTIONAL = {"name", "notes", "sm_count", "mm_tile_m", "mm_tile_n", "attention_flops_per_s",
             "allreduce_busbw", "busbw_max_other", "latency_small_s", "nic_bytes_per_s",
             "fp8_flops_per_s", "sources"}


# Fields that count things: whole numbers, at most this (what any machine or kernel has).
_COUNTS = {"gpus_per_node": 1024, "sm_count": 100_000, "mm_tile_m": 4096, "mm_tile_n": 4096}


def _from_mapping(data: dict, default_name: str, source: str) -> Hardware:
    unknown = sorted(set(data) - set(_FIELDS) - _IGNORED)
    if unknown:
        from helix_jax.errors import unknown_name

        raise ValueError(f"{source}: {unknown_name('hardware field', unknown[0], _FIELDS)}"
                         + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
                         + "; the fields are those of helix_jax.analysis.Hardware")
    missing = sorted(set(_FIELDS) - _OPTIONAL - set(data))
    if missing:
        raise ValueError(f"{source}: missing hardware fields {missing}")
    values = {"name": str(data.get("name", default_name)), "notes": str(data.get("notes", ""))}
    numbers = (set(_FIELDS) - _OPTIONAL) | (set(data) & {
        "sm_count", "mm_tile_m", "mm_tile_n", "attention_flops_per_s", "busbw_max_other",
        "latency_small_s", "nic_bytes_per_s", "fp8_flops_per_s"})
    for key in numbers:
        v = data[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{source}: field {key!r} must be a finite number, got {v!r}")
        required = key not in _OPTIONAL and not key.startswith("latency")
        if v < 0 or (v == 0 and required):
            raise ValueError(f"{source}: field {key!r} must be positive, got {v!r}")
        if key in _COUNTS:
            if float(v) != int(v) or v > _COUNTS[key]:
                raise ValueError(f"{source}: field {key!r} must be a whole number between "
                                 f"{0 if key in _OPTIONAL else 1} and {_COUNTS[key]:,}, got {v!r}")
            v = int(v)
        values[key] = v if key in _COUNTS else float(v)
    if "allreduce_busbw" in data:
        curve = data["allreduce_busbw"]
        ok = isinstance(curve, list) and all(
            isinstance(p, list) and len(p) == 2 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                and x > 0 for x in p)
            for p in curve)
        if not ok:
            raise ValueError(f"{source}: allreduce_busbw must be a list of [bytes, busbw] pairs "
                             f"of positive numbers, got {curve!r}")
        values["allreduce_busbw"] = tuple(sorted((float(b), float(w)) for b, w in curve))
    if "sources" in data:
        if not isinstance(data["sources"], dict):
            raise ValueError(f"{source}: sources must be a table of field = \"where it comes "
                             f"from\"")
        values["sources"] = {str(k): str(v) for k, v in data["sources"].items()}
    return Hardware(**values)


def hardware_to_dict(hw: Hardware) -> dict:
    """The profile as plain data (JSON/TOML-ready): what `load_hardware` reads back."""
    out = dataclasses.asdict(hw)
    out["allreduce_busbw"] = [list(p) for p in hw.allreduce_busbw]
    return out


def load_hardware(name_or_path: str | Path) -> Hardware:
    """A built-in profile by name, or one read from a .json or .toml file with Hardware's fields
    (`name` defaults to the file stem, `notes` to ""). Raises ValueError naming what is wrong."""
    key = str(name_or_path)
    if key in HARDWARE:
        return HARDWARE[key]
    path = Path(key).expanduser()
    if not path.exists():
        raise ValueError(f"unknown hardware {key!r}: no such file, and the built-in profiles are "
                         f"{', '.join(sorted(HARDWARE))}")
    input_file(path, "hardware file", "a .json or .toml file")
    if path.suffix not in (".json", ".toml"):
        raise ValueError(f"hardware file {path}: must be .json or .toml")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except OSError as e:
        raise ValueError(f"hardware file {path}: cannot read it ({e.strerror})") from None
    except ValueError as e:  # JSON, TOML and UTF-8 decoding errors
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise ValueError(f"hardware file {path}: not valid {kind} ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"hardware file {path}: expected a table/object of hardware fields, got "
                         f"{type(data).__name__}")
    return _from_mapping(data, path.stem, f"hardware file {path}")
