"""What a projection is: one typed record, whichever path made it (a whole compiled program, a
KV-cache step, or a training step composed from one pipeline stage).

Every path fills every field; a field that does not apply to a path holds None (`context` outside
KV-cache steps, `microbatch_size` outside composed steps), so a consumer never branches on which
keys exist. `to_dict()` is the JSON the CLI writes and the report layer reads (the documented keys,
README "What a projection holds"); `from_dict` reads it back (the planner's cache stores it so).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from helix_jax.layouts import parse_layout
from helix_jax.nn.fused_attention import runtime_kernel


@dataclass
class Timing:
    """The priced step: compute + exposed communication, and what follows from it (JSON key
    `projected`). The last groups of fields apply to one path each and are None elsewhere."""

    step_seconds: float
    compute_seconds: float
    compute_breakdown: dict[str, float]
    comm_seconds: float
    exposed_comm_seconds: float
    tokens_per_s: float
    mfu: float
    tpot_ms: float
    data_parallel_comm_seconds: float = 0.0
    data_parallel_exposed_seconds: float = 0.0
    # context parallelism's K/V ring: its priced passes, and how much the attention hides
    ring_comm_seconds: float | None = None
    ring_hidden_seconds: float | None = None
    # KV-cache steps (prefill, decode): the HBM floor of reading weights and cache
    hbm_floor_seconds: float | None = None
    hbm_floor_weight_bytes: float | None = None  # per device: weights as stored ...
    hbm_floor_cache_bytes: float | None = None  # ... and the KV cache it holds
    hbm_bound: bool | None = None
    ttft_ms: float | None = None
    # composed training steps: the pipeline extended by formula
    microbatch_seconds: float | None = None
    microbatch_compute_seconds: float | None = None
    pipeline_seconds: float | None = None
    bubble_seconds: float | None = None
    tensor_comm_seconds: float | None = None
    tensor_comm_exposed_seconds: float | None = None
    pipeline_send_seconds: float | None = None
    optimizer_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON `projected` object: the fields that apply to this path."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class Projection:
    """One layout's projection at full scale on one hardware profile (module doc)."""

    # what was projected
    model: str
    layout: str
    hardware: str
    mode: str
    partitioner: str
    remat: str
    devices: int
    mesh: dict[str, int]
    batch: int
    seq: int
    dtype: str
    batch_chunks: int
    accumulation_steps: int
    tokens_per_step: int
    params_total: int  # the model's parameters, and those one token runs (MoE: top_k experts)
    params_active: int
    # what was compiled, and what was extended by formula
    compiled: str
    extended_by_formula: list[str]
    # read off the program
    flops_per_device: float
    flops_note: str
    model_flops_per_token: float
    mfu_convention: str
    memory_bytes_per_device: float
    memory: dict[str, Any]
    fits: bool
    fits_why: str
    collectives: list[dict[str, Any]]
    collective_sites: list[dict[str, Any]]
    comm_bytes_per_device: dict[str, float]
    comm_bytes_by_op: dict[str, float]
    expected_comm_bytes_by_op: dict[str, float]
    # priced
    projected: Timing
    pricing: dict[str, Any]
    intra_node_axes: tuple[str, ...]
    bytes_per_element: int
    # path-specific (None where it does not apply)
    context: int | None = None  # KV-cache steps: the cache length
    weights: str = "model"  # KV-cache steps: the stored weights, "model" (dtype) or "float8"
    microbatch_size: int | None = None  # composed steps: sequences per pipeline microbatch
    # the attention kernel: priced, compiled for the projection, and run by the runtime
    attention_kernel: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # keys callers added

    def __post_init__(self) -> None:
        if not self.attention_kernel:
            self.attention_kernel = attention_kernel_note(self.layout, self.mode,
                                                          self.partitioner)

    @property
    def step_seconds(self) -> float:
        return self.projected.step_seconds

    def to_dict(self) -> dict[str, Any]:
        """The projection's JSON: every top-level key, whichever path made it."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("projected", "extra")}
        out["projected"] = self.projected.to_dict()
        out["intra_node_axes"] = list(self.intra_node_axes)
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Projection:
        """Read a projection's JSON back (keys this version does not know go to `extra`)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        timing = {f.name for f in dataclasses.fields(Timing)}
        kwargs = {k: v for k, v in d.items() if k in names}
        kwargs["projected"] = Timing(**{k: v for k, v in d["projected"].items() if k in timing})
        kwargs["intra_node_axes"] = tuple(d.get("intra_node_axes", ()))
        kwargs.setdefault("collective_sites", [])  # older JSON had them for whole programs only
        kwargs.setdefault("params_total", None)  # older JSON did not count parameters
        kwargs.setdefault("params_active", None)
        return cls(**kwargs, extra={k: v for k, v in d.items() if k not in names})


def attention_kernel_note(spec: str, mode: str, partitioner: str,
                          kernel: str = "flash") -> dict[str, str]:
    """What the projection says about attention: the roofline prices each device's attention
    core as one fused flash kernel (or, `kernel` "unfused", as the kernels of runs before flash
    attention); the program it reads runs the blockwise scan (a CPU's library call would hold
    the whole score matrix); the runtime runs `runtime_kernel`."""
    priced = ("one fused flash kernel per device: its FLOPs at attention_flops_per_s "
              "(FlashAttention-3's rate), its on-chip work left out" if kernel == "flash" else
              "unfused, as before flash attention: batched GEMMs at flops_per_s, score and "
              "probability blocks written to and read from HBM, softmax and masks as "
              "memory-bound kernels")
    return {"priced": priced,
            "compiled": "blockwise online-softmax scan (no whole score matrix in memory)",
            "runtime": runtime_kernel(parse_layout(spec), mode, partitioner)}


def projection_keys() -> tuple[str, ...]:
    """The top-level keys of every projection's JSON, in order."""
    return tuple(f.name for f in dataclasses.fields(Projection) if f.name != "extra")
