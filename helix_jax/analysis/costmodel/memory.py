"""GPU memory per device of a training step, by formula: what a run with fused GPU kernels keeps,
not what XLA:CPU's memory_analysis reports (that errs high: f32 upcasts, unfused optimizer
temporaries, the blockwise attention's saved score blocks).

  model states  Megatron-LM's bytes per parameter (docs/user-guide/features/dist_optimizer.md,
                https://docs.nvidia.com/megatron-core/developer-guide/latest/
                distrib_optimizer.html): 16-bit parameters (elem bytes), fp32 main gradients
                (4), and fp32 main parameters (4, none when the parameters are fp32 already)
                and two fp32 Adam moments (8) divided over the d ranks of the distributed
                optimizer: 18 / 6 + 12/d bytes for bf16, 16 / 8 + 8/d for fp32. Whole programs
                keep the optimizer state with the parameters (d = 1), but under dp:fsdp=true
                (ZeRO-3), which stores fp32 parameters, gradients and moments sharded (16 bytes
                per local parameter) and gathers the 16-bit weights of two layers at a time.
  activations   Korthikanti et al. 2022 (arXiv 2205.05198), Section 4 and Table 2: per layer
                and microbatch the tensors the backward reads, each [tokens, width] in the
                model's dtype. Attention keeps the two norm inputs, the q/k/v projection input,
                q, k, v and the core's output (`sbh(10 + 24/t)` with dropout masks and
                `5as/h` of scores in their table); the FFN its input and hidden activations
                (GELU, squared ReLU: the activation's input and output; SwiGLU: both halves and
                their product); an MoE layer its router probabilities (fp32), the dispatched
                tokens, the experts' hidden activations and outputs at their capacity. On a GPU
                the attention core is one fused (flash) kernel, as the roofline prices it: it
                keeps its log-sum-exp (fp32 per head and token) and no scores, so `none` and
                `selective` keep the same. Rotary positions keep nothing (their backward needs
                only the angles); q/k norms keep their inputs. `full` keeps each layer's input
                and, at the peak, one layer recomputed whole. Tensors on [tokens, d_model]
                outside the tensor-parallel blocks are split by sequence parallelism.
  logits        the last stage's fp32 logits, their softmax and its gradient (3 x 4 bytes per
                token and local vocabulary entry).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from helix_jax.analysis.costmodel.formulas import DTYPE_BYTES
from helix_jax.config import ModelConfig
from helix_jax.layouts import Layout
from helix_jax.parallel.schedule import build as schedule_table

GRAD_BYTES = 4.0  # fp32 main gradients (Megatron-LM dist_optimizer.md)
MASTER_BYTES = 4.0  # fp32 main parameters beside 16-bit ones (same source)
ADAM_BYTES = 8.0  # two fp32 Adam moments (same source: 12/d = master + moments)
LOGIT_COPIES = 3.0  # fp32 logits, their softmax and its gradient
FSDP_GATHERED_LAYERS = 2  # one layer gathered for compute, the next prefetched (PyTorch FSDP)


def model_state_bytes(params_local: float, elem: int, dp: int = 1) -> float:
    """Bytes of model state per device (module doc): `elem`-byte parameters, fp32 gradients,
    and the fp32 masters (none for fp32 parameters) and Adam moments over `dp` ranks of the
    distributed optimizer (dp = 1: not distributed)."""
    master = MASTER_BYTES if elem < 4 else 0.0
    return params_local * (elem + GRAD_BYTES + (master + ADAM_BYTES) / dp)


def fsdp_state_bytes(params_local: float, layer_params: float, elem: int) -> float:
    """Bytes of model state per device under ZeRO-3 / FSDP: fp32 parameters, gradients and
    moments of the local shard, and the gathered `elem`-byte weights of FSDP_GATHERED_LAYERS
    layers of `layer_params` parameters each."""
    return (params_local * (4.0 + GRAD_BYTES + ADAM_BYTES)
            + FSDP_GATHERED_LAYERS * layer_params * elem)


@dataclass(frozen=True)
class Split:
    """How one device's share of a layer's activations is cut. `tokens`: the sequence positions
    (x sequences) it computes per microbatch; the rest: shards of each dimension (1: whole);
    `keys`: the keys each query sees (only an unfused attention core keeps scores)."""

    tokens: float
    hidden: int = 1  # [tokens, d_model] tensors outside the tensor-parallel blocks (sp: tp)
    heads: int = 1
    head_dim: int = 1
    mlp: int = 1
    expert_mlp: int = 1
    vocab: int = 1
    expert_slots: float = 0.0  # routed tokens the device's experts hold (capacity x top_k)
    keys: float = 0.0
    kv_seq: int = 1  # K/V split along the sequence (kvp)


def split_of(cfg: ModelConfig, layout: Layout, micro: float) -> Split:
    """The split of `layout` for a microbatch of `micro` sequences per batch shard: its context
    ranks cut the sequence, sequence parallelism the [tokens, d_model] tensors; an MoE layer's
    experts hold capacity_factor x top_k x the tokens of the ranks they gather from."""
    tokens = micro * cfg.seq / layout.size("cp_seq")
    spread = layout.size("batch", "cp_seq")
    slots = (cfg.capacity_factor * cfg.top_k * tokens * spread
             / layout.size("batch", "cp_seq", "expert")) if cfg.is_moe else 0.0
    return Split(tokens=tokens, hidden=layout.size("act_seq"), heads=layout.size("heads"),
                 head_dim=layout.size("head_dim"), mlp=layout.size("mlp"),
                 expert_mlp=layout.size("expert_mlp"), vocab=layout.size("vocab"),
                 expert_slots=slots, keys=cfg.seq, kv_seq=layout.size("kv_seq"))


def _ffn_width_factor(cfg: ModelConfig) -> float:
    """Hidden tensors an FFN keeps per unit of width: SwiGLU both halves and their product, GELU
    and squared ReLU the activation's input and output."""
    return 3.0 if cfg.ffn == "swiglu" else 2.0


def layer_activation_bytes(cfg: ModelConfig, split: Split, remat: str, moe: bool = False,
                           flash: bool = True, dropout: bool = False) -> float:
    """Bytes one layer keeps for its backward per device and microbatch (module doc). `moe`: the
    layer's FFN is the mixture of experts; `flash=False`: an unfused attention core that keeps
    its softmax (and with `dropout` its mask and output); `dropout`: Korthikanti et al.'s two
    dropout masks of one byte per element (the models here have no dropout)."""
    e, t = DTYPE_BYTES[cfg.dtype], split.tokens
    hid = t * cfg.d_model * e / split.hidden  # one [tokens, d_model] tensor
    if remat == "full":
        return hid
    heads = cfg.n_heads / split.heads
    kv_heads = math.ceil(cfg.kv_heads / split.heads)  # K/V heads replicated past their count
    width = cfg.head_dim / split.head_dim
    q, kv = t * heads * width * e, t * kv_heads * width * e / split.kv_seq
    attention = 2 * hid + hid + q + 2 * kv + q  # norm inputs, q/k/v input, q, k, v, core output
    if cfg.qk_norm:
        attention += q + kv
    if flash:
        attention += 4.0 * t * heads  # the fused core's fp32 log-sum-exp
    elif remat != "selective":
        attention += t * heads * split.keys * (e + (1 + e if dropout else 0))
    masks = 2 * t * cfg.d_model / split.hidden if dropout else 0.0
    f = _ffn_width_factor(cfg)
    if not moe:
        ffn = hid + f * t * cfg.d_ff * e / split.mlp
    else:
        slots = split.expert_slots
        ffn = (hid + 4.0 * t * cfg.n_experts / split.hidden
               + 2 * slots * cfg.d_model * e + f * slots * cfg.expert_d_ff * e / split.expert_mlp
               + f * t * cfg.shared_d_ff * e / split.mlp)
    return attention + masks + ffn


def stage_activation_bytes(cfg: ModelConfig, split: Split, remat: str, layers: int,
                           in_flight: float = 1.0) -> float:
    """Bytes a stage of `layers` layers keeps with `in_flight` microbatches: each layer's
    kept tensors (the first_dense_layers of an MoE model dense, the rest MoE) and, under full
    recompute, one layer recomputed whole at the peak."""
    dense = min(cfg.first_dense_layers, layers) if cfg.is_moe else layers
    kinds = [(dense, False), (layers - dense, True)]
    kept = sum(n * layer_activation_bytes(cfg, split, remat, moe) for n, moe in kinds)
    working = 0.0
    if remat == "full":
        working = max(layer_activation_bytes(cfg, split, "none", moe) for n, moe in kinds if n)
        working -= layer_activation_bytes(cfg, split, "full")
    return in_flight * kept + working


def logits_bytes(cfg: ModelConfig, split: Split) -> float:
    """Bytes of the loss's fp32 logits, softmax and gradient per device (0 without a vocabulary)."""
    return LOGIT_COPIES * 4.0 * split.tokens * cfg.vocab / split.vocab if cfg.vocab else 0.0


def activation_bytes_per_layer(cfg: ModelConfig, micro: int, tp: int, sp: bool,
                               remat: str, cp: int = 1) -> float:
    """Activations one layer keeps per device and microbatch of `micro` sequences under
    Megatron's tensor (and sequence) parallelism over `tp` and `cp` context ranks; for an MoE
    model the lesser of its dense and MoE layers (a lower bound the planner prunes with)."""
    tokens = micro * cfg.seq / cp
    split = Split(tokens=tokens, hidden=tp if sp else 1, heads=tp, mlp=tp, expert_mlp=tp,
                  vocab=tp, keys=cfg.seq,
                  expert_slots=cfg.capacity_factor * cfg.top_k * tokens if cfg.is_moe else 0)
    kinds = (False, True) if cfg.is_moe else (False,)
    return min(layer_activation_bytes(cfg, split, remat, moe) for moe in kinds)


def in_flight(schedule: str, pp: int, microbatches: int, virtual: int) -> float:
    """Microbatches whose activations the first stage holds at once: all M under GPipe; under
    1F1B what the schedule `helix train` runs holds (`parallel.schedule`: min(p, M), and with V
    chunks per stage at most p stage-microbatches of chunks, fewer than the min(p, M) ·
    (1 + (p − 1)/(pV)) of Megatron's interleaved warm-up)."""
    if schedule == "gpipe":
        return microbatches
    return _table_in_flight(pp, microbatches, virtual)


@functools.lru_cache(maxsize=256)
def _table_in_flight(pp: int, microbatches: int, virtual: int) -> float:
    return max(schedule_table(pp, microbatches, virtual).in_flight()) / virtual


def local_parameter_count(sharded, experts_only: bool = False) -> int:
    """Parameters this device holds (the stage's shards on one rank); `experts_only`: of the
    routed experts alone."""
    import jax

    from helix_jax.model import logical_axes

    sizes = [math.prod(leaf.sharding.shard_shape(leaf.shape))
             for leaf in jax.tree.leaves(sharded.abstract_params())]
    if not experts_only:
        return sum(sizes)
    expert = [("expert" in axes) for axes in jax.tree.leaves(
        logical_axes(sharded.cfg), is_leaf=lambda t: isinstance(t, tuple))]
    return sum(n for n, e in zip(sizes, expert) if e)


def composed_memory(cfg: ModelConfig, layout: Layout, capacity_bytes: float, compiled: dict,
                    params_local: tuple[int, int], remat: str, layers: int) -> dict:
    """Memory per device of a composed training step by formula (module doc), with its parts and
    why it fits or not. `compiled`: the stage program's CPU memory_analysis (reported beside);
    `params_local`: (dense, expert) parameters this device holds; `layers`: the most any stage
    holds."""
    o = layout.options
    pp, dp, M = o["pp"], o["dp"], o["microbatches"]
    cp, ep = o.get("cp", 1), o.get("ep", 1)
    micro = cfg.batch // dp // M
    split = split_of(cfg, layout, micro)
    flight = in_flight(o["schedule"], pp, M, o["virtual"])
    act = stage_activation_bytes(cfg, split, remat, layers, flight)
    dense, experts = params_local
    elem = DTYPE_BYTES[cfg.dtype]
    states = (model_state_bytes(dense, elem, dp * cp)
              + model_state_bytes(experts, elem, dp * cp // ep))
    logits = logits_bytes(cfg, split)
    total = states + act + logits
    parts = {"compiled_stage_program": compiled, "model_states_bytes": states,
             "activations_in_flight_bytes": act, "logits_bytes": logits,
             "adam_moments_bytes": ADAM_BYTES * (dense / (dp * cp) + experts / (dp * cp // ep)),
             "parameters_per_device": dense + experts, "expert_parameters_per_device": experts,
             "how": ("formula (analysis/costmodel/memory.py): 16-bit parameters + fp32 gradients "
                     "+ fp32 master and Adam moments sharded over the dp x cp ranks, experts "
                     "over dp x cp / ep (distributed optimizer), activations of the in-flight "
                     "microbatches (Korthikanti et al. 2022, fused attention) and the last "
                     "stage's fp32 logits; the compiled stage program's memory_analysis is "
                     "beside it (on CPU it errs high: f32 upcasts)")}
    why = (f"{total / 1e9:.1f} GB per device against {capacity_bytes / 1e9:.0f} GB: model "
           f"states {states / 1e9:.1f} GB + {flight:g} microbatches' activations "
           f"{act / 1e9:.1f} GB + logits {logits / 1e9:.1f} GB")
    return {"total": total, "parts": parts, "why": why, "in_flight": flight}


def whole_memory(sharded, accumulation: int, compiled: dict | None = None) -> dict:
    """Memory per device of a whole-program training step by formula (module doc): the model
    states as the layout keeps them (replicated with the parameters, or sharded under
    dp:fsdp=true), one accumulation chunk's activations and logits. `compiled`: the program's
    CPU memory_analysis, reported beside (it errs high)."""
    from helix_jax.counts import param_counts

    cfg, layout = sharded.cfg, sharded.layout
    elem = DTYPE_BYTES[cfg.dtype]
    local = local_parameter_count(sharded)
    if layout.options.get("fsdp"):
        total_params = param_counts(cfg)[0]
        outside = cfg.vocab * cfg.d_model * (1 if cfg.tie_embeddings else 2)
        states = fsdp_state_bytes(local, (total_params - outside) / cfg.n_layers, elem)
        kept = "fp32 parameters, gradients and Adam moments sharded (ZeRO-3) + two gathered layers"
    else:
        states = model_state_bytes(local, elem)
        kept = "16-bit parameters + fp32 gradients, masters and Adam moments"
    micro = cfg.batch / layout.size("batch") / accumulation
    flight, layers, pp = 1.0, cfg.n_layers, layout.size("layers")
    if pp > 1:  # a pipeline stage compiled whole: its layers, the microbatches it holds at once
        o = layout.options
        flight = in_flight(o.get("schedule", "gpipe"), pp, o["microbatches"], o.get("virtual", 1))
        micro, layers = cfg.batch / layout.size("batch") / o["microbatches"], cfg.n_layers // pp
    split = split_of(cfg, layout, micro)
    act = flight * stage_activation_bytes(cfg, split, sharded.remat, layers)
    stage = f"{flight:g} in-flight microbatches of {micro:g} sequences on a stage's {layers} layers"
    step = f"one of {accumulation} accumulation steps"
    held = stage if pp > 1 else f"{step} of {cfg.batch // accumulation} sequences"
    logits = logits_bytes(cfg, split)
    total = states + act + logits
    parts = {"model_states_bytes": states, "activations_bytes": act, "logits_bytes": logits,
             "parameters_per_device": local,
             "how": (f"formula (analysis/costmodel/memory.py): {kept}, the activations of "
                     f"{stage if pp > 1 else step} (Korthikanti et al. 2022, fused attention, remat "
                     f"{sharded.remat}) and the fp32 logits")}
    if compiled is not None:
        parts["compiled_program"] = {**compiled, "note": "XLA:CPU memory_analysis of the "
                                     "compiled program: errs high (f32 upcasts, unfused "
                                     "optimizer temporaries); not what fits uses"}
    return {"total": total, "parts": parts, "states": states, "activations": act,
            "logits": logits, "held": held}
