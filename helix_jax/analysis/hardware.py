"""Hardware profiles that price FLOPs, memory traffic and collectives; built-in or from a file.

All bandwidths are per GPU and per direction, in bytes/s; latencies are per ring step, in seconds.
Device (mesh position) p sits on node p // gpus_per_node: lay mesh axes out so that the axis
meant to stay inside a node is the fastest-varying one.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Hardware:
    """One GPU type in one cluster. `flops_per_s` is the achieved matrix rate used for pricing."""

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

    def node_of(self, device: int) -> int:
        """Node of a mesh position, with positions filling nodes in order."""
        return device // self.gpus_per_node

    def link(self, crosses_nodes: bool) -> tuple[float, float]:
        """(bytes/s per direction, latency per step) of NVLink, or of InfiniBand across nodes."""
        if crosses_nodes:
            return self.ib_bytes_per_s, self.latency_ib_s
        return self.nvlink_bytes_per_s, self.latency_nvlink_s


_LATENCY_NOTE = ("Latencies (3 us per NVLink step, 10 us per InfiniBand step) are assumed orders "
                 "of magnitude for NCCL ring steps, not measurements.")

HARDWARE: dict[str, Hardware] = {
    "h100-paper": Hardware(
        name="h100-paper", flops_per_s=800e12, peak_flops_per_s=989e12, hbm_bytes_per_s=3.0e12,
        nvlink_bytes_per_s=200e9, ib_bytes_per_s=200e9, gpus_per_node=4, hbm_capacity_bytes=80e9,
        latency_nvlink_s=3e-6, latency_ib_s=10e-6,
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
        latency_nvlink_s=3e-6, latency_ib_s=10e-6,
        notes=("H100 SXM datasheet figures on the paper's cluster shape (4 nodes x 4 GPUs): "
               "989 TFLOP/s peak dense fp16/bf16, 800 achieved; HBM3 3.35 TB/s peak; NVLink 4 "
               "900 GB/s total = 450 GB/s per direction; one 400 Gb/s InfiniBand NIC per GPU = "
               "50 GB/s per direction. A DGX H100 has 8 GPUs per node: load a file with "
               "gpus_per_node = 8 for that. " + _LATENCY_NOTE)),
}

_FIELDS = {f.name: f for f in dataclasses.fields(Hardware)}
_OPTIONAL = {"name", "notes"}


def _from_mapping(data: dict, default_name: str, source: str) -> Hardware:
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ValueError(f"{source}: unknown hardware fields {unknown}; known: {sorted(_FIELDS)}")
    missing = sorted(set(_FIELDS) - _OPTIONAL - set(data))
    if missing:
        raise ValueError(f"{source}: missing hardware fields {missing}")
    values = {"name": str(data.get("name", default_name)), "notes": str(data.get("notes", ""))}
    for key in set(_FIELDS) - _OPTIONAL:
        v = data[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{source}: field {key!r} must be a number, got {v!r}")
        if v < 0 or (v == 0 and not key.startswith("latency")):
            raise ValueError(f"{source}: field {key!r} must be positive, got {v!r}")
        values[key] = int(v) if key == "gpus_per_node" else float(v)
    return Hardware(**values)


def load_hardware(name_or_path: str | Path) -> Hardware:
    """A built-in profile by name, or one read from a .json or .toml file with Hardware's fields
    (`name` defaults to the file stem, `notes` to ""). Raises ValueError naming what is wrong."""
    key = str(name_or_path)
    if key in HARDWARE:
        return HARDWARE[key]
    path = Path(key)
    if not path.is_file():
        raise ValueError(f"unknown hardware {key!r}: not a file, and known profiles are "
                         f"{sorted(HARDWARE)}")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
    elif path.suffix == ".toml":
        data = tomllib.loads(path.read_text())
    else:
        raise ValueError(f"{path}: hardware files must be .json or .toml")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a table/object of hardware fields")
    return _from_mapping(data, path.stem, str(path))
