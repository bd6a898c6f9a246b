"""Lower bounds on a candidate's projected memory and step time, from arithmetic alone: what the
planner prunes with before it compiles anything.

A bound here must never exceed what `project` returns for the candidate (else pruning could drop
the true best); the planner checks every candidate it does project against its bounds and reports
any violation. Each bound takes only the parts of the projection that are certain to be there:

memory per device
  forward      the float32 parameter shards the program takes as arguments
  train        parameters + AdamW moments (12 bytes per local parameter), all arguments
  composed     the formula `compose.project_composed` uses, less the logits: 16-bit parameters,
               fp32 gradients, fp32 masters and moments over the dp replicas, and the
               activations of the microbatches in flight (`memory.activation_bytes_per_layer`,
               `memory.in_flight`)
  prefill/decode  16-bit weights + the device's KV cache (`project.hbm_floor_bytes`)

step time = compute + exposed communication (+ bubble, sends, ... when composed), so
  compute      the matmul FLOPs the program must contain, at the fastest matmul rate of the
               profile (no kernel is priced faster: a matmul kernel takes max(FLOPs / (rate x
               tile efficiency), bytes / HBM)): the weight GEMMs (MoE experts at their capacity,
               at least capacity_factor x top_k tokens each), the attention's scores and P·V
               over the visible (query, key) pairs; a training step 3x that less the input
               gradient of the first layer's q/k/v projection (a model without a vocabulary
               takes no input gradient). GPipe forward programs run every stage every step:
               x (M + p - 1) / M. Composed steps: the schedule's microbatch times x one stage's
               FLOPs. Never below reading the local weights once from HBM.
  exposed comm the collectives `formulas.expected_comm_bytes` says the forward pass holds
               (tested against the compiled programs), each at its algorithm's least bus factor
               (all-reduce 1, the others 1/2) over the fastest link of the profile, less what may
               hide: ep:chunks=K's all-to-alls down to 1/K, data-parallel collectives and, with
               tp_overlap, the tensor-parallel ones entirely; pipeline sends of a composed step
               at the fastest link. Zero where the formulas do not cover a layout (kvp) or XLA
               chooses the collectives (gspmd).
  decode/prefill  also never below the HBM floor (weights + KV cache at HBM bandwidth, read by
               each pipeline stage in turn): the projection's own floor.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from helix_jax.analysis.costmodel.formulas import (
    DTYPE_BYTES,
    expected_comm_bytes,
    ffn_flops_per_token,
)
from helix_jax.analysis.costmodel.hardware import Hardware
from helix_jax.analysis.costmodel.memory import (
    activation_bytes_per_layer,
    in_flight,
    local_parameter_count,
    model_state_bytes,
)
from helix_jax.analysis.costmodel.terms import analysed_config, build_sharded
from helix_jax.analysis.planner.space import Candidate
from helix_jax.config import ModelConfig
from helix_jax.layouts import parse_layout

_LEAST_BUS_FACTOR = {"all-reduce": 1.0, "all-gather": 0.5, "reduce-scatter": 0.5,
                     "all-to-all": 0.5, "collective-permute": 0.5}


@dataclass(frozen=True)
class Bounds:
    """Lower bounds of one candidate (bytes per device, seconds per step) and their parts."""

    memory_bytes: float
    seconds: float
    compute_seconds: float
    comm_seconds: float
    floor_seconds: float = 0.0

    def to_json(self) -> dict:
        return {"memory_bytes": self.memory_bytes, "seconds": self.seconds,
                "compute_seconds": self.compute_seconds, "comm_seconds": self.comm_seconds,
                "floor_seconds": self.floor_seconds}


def fastest_matmul_rate(hw: Hardware) -> float:
    return max(hw.flops_per_s, hw.attention_flops_per_s or 0.0)


def fastest_link(hw: Hardware) -> float:
    """Bytes/s that no collective's bus bandwidth exceeds on `hw` (in a node or across nodes)."""
    rates = [hw.nvlink_bytes_per_s, hw.ib_bytes_per_s]
    if hw.measured_links:
        rates += [max(bw for _, bw in hw.allreduce_busbw), hw.busbw_max_other,
                  hw.gpus_per_node * hw.nic_bytes_per_s]
    return max(rates)


def _per_token(cfg: ModelConfig, keys_per_query: float) -> dict[str, float]:
    """Matmul FLOPs per token of each part of one (average) layer's forward pass, and of the LM
    head. Routed experts run capacity_factor x top_k buffer slots per token (the buffers hold
    at least that many, whatever the routing)."""
    D, hd, gd = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    moe = (cfg.top_k * cfg.capacity_factor * ffn_flops_per_token(cfg, cfg.expert_d_ff)
           + ffn_flops_per_token(cfg, cfg.shared_d_ff) + 2 * D * cfg.n_experts)
    dense = ffn_flops_per_token(cfg, cfg.d_ff)
    ffn = ((cfg.n_layers - cfg.moe_layers) * dense + cfg.moe_layers * moe) / cfg.n_layers
    return {"projections": 4 * D * (hd + gd), "attention": 4 * hd * keys_per_query, "ffn": ffn,
            "head": 2 * D * cfg.vocab}


def forward_flops(cfg: ModelConfig, tokens: float, keys_per_query: float) -> float:
    """Matmul FLOPs a forward pass over `tokens` tokens must contain (see the module doc);
    `keys_per_query`: the mean visible keys of a query."""
    f = _per_token(cfg, keys_per_query)
    return (cfg.n_layers * (f["projections"] + f["attention"] + f["ffn"]) + f["head"]) * tokens


def _visible(cfg: ModelConfig) -> float:
    """Mean keys a query attends to over a whole sequence."""
    return (cfg.seq + 1) / 2 if cfg.causal else cfg.seq


def train_flops(cfg: ModelConfig, remat: str = "none") -> float:
    """Matmul FLOPs a training step over the batch must contain: 3x the forward, less the first
    layer's q/k/v input gradient, plus what `remat` recomputes: the attention core (selective)
    or each layer's forward but its last matmul, whose output the backward never needs (full)."""
    tokens = cfg.batch * cfg.seq
    f = _per_token(cfg, _visible(cfg))
    first = 2 * tokens * cfg.d_model * (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim
    again = {"none": 0.0, "selective": f["attention"],
             "full": f["projections"] + f["attention"] + f["ffn"] / 2}[remat]
    return 3 * forward_flops(cfg, tokens, _visible(cfg)) - first + cfg.n_layers * again * tokens


def comm_seconds(nbytes: dict[str, float], hw: Hardware, a2a_share: float = 1.0) -> float:
    """The least time of these collective bytes (by op) on `hw` (see the module doc)."""
    link = fastest_link(hw)
    return sum(_LEAST_BUS_FACTOR.get(op, 0.5) * b * (a2a_share if op == "all-to-all" else 1.0)
               for op, b in nbytes.items()) / link


@functools.lru_cache(maxsize=4096)
def _local_params(cfg: ModelConfig, spec: str) -> int:
    """Parameters one device holds on the layout `spec`."""
    return local_parameter_count(build_sharded(cfg, parse_layout(spec), 1))


def bounds(c: Candidate, cfg: ModelConfig, hw: Hardware, mode: str) -> Bounds:
    """Lower bounds of `c`'s projection of `cfg` on `hw` in `mode` (see the module doc)."""
    if c.composed:
        return _composed(c, cfg, hw)
    lay = c.layout
    analysed = analysed_config(cfg)
    elem = DTYPE_BYTES[cfg.dtype]
    rate, n = fastest_matmul_rate(hw), lay.devices
    local = _local_params(analysed, lay.spec)
    weights_read = local * elem / hw.hbm_bytes_per_s
    if mode in ("prefill", "decode"):
        from helix_jax.analysis.costmodel.project import hbm_floor_bytes, hbm_floor_seconds

        sharded = build_sharded(analysed, lay, 1)
        floor_bytes = hbm_floor_bytes(sharded)
        T = cfg.seq if mode == "prefill" else 1
        keys = _visible(cfg) if mode == "prefill" else cfg.seq
        compute = forward_flops(cfg, cfg.batch * T, keys) / n / rate
        floor = hbm_floor_seconds(sharded, hw.hbm_bytes_per_s)
        return Bounds(floor_bytes, max(compute, floor), compute, 0.0, floor)
    train = mode == "train"
    if train:
        flops = train_flops(cfg, c.remat)
    else:
        flops = forward_flops(cfg, cfg.batch * cfg.seq, _visible(cfg))
        if lay.kind == "tp-pp" and lay.size("layers") > 1:
            M, p = lay.options["microbatches"], lay.size("layers")
            flops *= (M + p - 1) / M  # every stage computes every step
    compute = max(flops / n / rate, weights_read)
    comm = 0.0
    if c.partitioner == "shard_map":
        expected = expected_comm_bytes(analysed, lay)
        if train and lay.kind == "dp":  # fsdp's gathers are data-parallel: they may hide
            expected.pop("all-gather", None)
        comm = comm_seconds(expected, hw, 1 / lay.options.get("chunks", 1))
    memory = local * (12.0 if train else 4.0)
    return Bounds(memory, compute + comm, compute, comm)


def _composed(c: Candidate, cfg: ModelConfig, hw: Hardware) -> Bounds:
    o = c.layout.options
    tp, pp, dp = o["tp"], o["pp"], o["dp"]
    M, V, schedule, sp = o["microbatches"], o["virtual"], o["schedule"], o["sp"]
    micro = cfg.batch // dp // M
    stage_cfg = cfg.replace(n_layers=cfg.n_layers // pp, batch=micro)
    stage_spec = f"tp-pp:tp={tp},pp=1,sp={str(sp).lower()},microbatches=1"
    analysed = analysed_config(stage_cfg)
    elem = DTYPE_BYTES[cfg.dtype]
    chunks_time = M + (pp - 1) / V if schedule == "1f1b" else M + pp - 1
    rate = fastest_matmul_rate(hw)
    local = _local_params(analysed.replace(batch=1), stage_spec)  # the same for every micro
    per_micro = max(train_flops(stage_cfg, c.remat) / tp / rate, local * elem / hw.hbm_bytes_per_s)
    tensor = 0.0
    if not o.get("tp_overlap") and tp > 1:
        tensor = comm_seconds(expected_comm_bytes(analysed, parse_layout(stage_spec)), hw)
    sends = 2 * M * V if pp > 1 else 0
    p2p = sends * micro * cfg.seq * cfg.d_model * elem / tp / fastest_link(hw)
    states = model_state_bytes(local, elem, dp)
    act = activation_bytes_per_layer(cfg, micro, tp, sp, c.remat) * stage_cfg.n_layers
    memory = states + in_flight(schedule, pp, M, V) * act
    compute = chunks_time * per_micro
    comm = chunks_time * tensor + p2p
    return Bounds(memory, compute + comm, compute, comm)


@dataclass(frozen=True)
class Floor:
    """What every layout must hold across all its devices together: each parameter (and in
    training its AdamW state) once and, to prefill or decode, every sequence's KV cache once.
    When this exceeds the devices' capacity no layout can fit, however it shards."""

    state_bytes: float  # the parameters as the step holds them (see `bounds`), once
    cache_bytes_per_sequence: float  # one sequence's KV cache at the context (0 outside decode)
    batch: int
    devices: int
    capacity_bytes: float  # devices x one device's HBM
    state: str  # what state_bytes counts, in words

    @property
    def total_bytes(self) -> float:
        return self.state_bytes + self.cache_bytes_per_sequence * self.batch

    @property
    def max_batch(self) -> int:
        """The largest batch whose floor fits (0: not even one sequence; the batch when the
        floor is not per sequence)."""
        room = self.capacity_bytes - self.state_bytes
        if room < 0:
            return 0
        if not self.cache_bytes_per_sequence:
            return self.batch
        return int(room // self.cache_bytes_per_sequence)

    @property
    def min_devices(self) -> int:
        """The fewest devices of this capacity that could hold the floor."""
        return math.ceil(self.total_bytes / (self.capacity_bytes / self.devices))


def whole_model_floor(cfg: ModelConfig, hw: Hardware, devices: int, mode: str) -> Floor:
    """The `Floor` of `cfg` in `mode` on `devices` devices of `hw` (bytes per parameter as in
    `bounds`: 4 to run forward, 12 to train, 16-bit weights to prefill or decode)."""
    from helix_jax.analysis.costmodel.project import hbm_floor_bytes

    analysed = analysed_config(cfg)
    whole = build_sharded(analysed, parse_layout("single"), 1)
    params = local_parameter_count(whole)
    elem = DTYPE_BYTES[analysed.dtype]
    if mode in ("prefill", "decode"):
        weights = params * elem
        per_sequence = (hbm_floor_bytes(whole) - weights) / cfg.batch
        state = "16-bit weights"
    else:
        weights = params * (12.0 if mode == "train" else 4.0)
        per_sequence = 0.0
        state = ("float32 parameters and AdamW moments" if mode == "train"
                 else "float32 parameters")
    return Floor(weights, per_sequence, cfg.batch, devices, devices * hw.hbm_capacity_bytes, state)
