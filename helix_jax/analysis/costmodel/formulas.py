"""The analytic cross-check: model FLOPs per token and each layout's expected collective bytes.

These are the formulas of docs/layouts.md and docs/cost-model.md, written per layout. `helix
project` reads the real numbers off the compiled program; tests compare the two, so a collective
that XLA adds, drops or resizes shows up as a disagreement.
"""

from __future__ import annotations

import math

from helix_jax.config import ModelConfig
from helix_jax.layouts import Layout
from helix_jax.nn.attention import block_size
from helix_jax.routing import capacity

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def ffn_flops_per_token(cfg: ModelConfig, width: int) -> float:
    """One token through one FFN of hidden width `width`: 2 matmuls, 3 with SwiGLU's gate."""
    return 2 * cfg.d_model * width * (3 if cfg.ffn == "swiglu" else 2)


def forward_flops_per_token(cfg: ModelConfig) -> float:
    """Model FLOPs of one token's forward pass; causal attention sees S/2 keys on average.

    Per layer: 4·D·H·d for the q and output projections and 4·D·G·d for k and v (G K/V heads),
    4·S·H·d attention (scores and P·V; halved when causal), and the FFN: 2·D·F per matmul (two,
    three with SwiGLU). A MoE layer runs top_k experts of width moe_d_ff, the shared experts and
    the router (2·D·E); leading dense layers a dense FFN. Plus 2·D·V for the LM head.
    docs/cost-model.md; with causal=False and × 3 this is Megatron's training formula.
    """
    D, S = cfg.d_model, cfg.seq
    hd, gd = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    attention = 4 * D * hd + 4 * D * gd + 4 * S * hd * (0.5 if cfg.causal else 1.0)
    dense = ffn_flops_per_token(cfg, cfg.d_ff)
    moe = (cfg.top_k * ffn_flops_per_token(cfg, cfg.expert_d_ff)
           + ffn_flops_per_token(cfg, cfg.shared_d_ff) + 2 * D * cfg.n_experts)
    ffn = (cfg.n_layers - cfg.moe_layers) * dense + cfg.moe_layers * moe
    return cfg.n_layers * attention + ffn + 2 * D * cfg.vocab


def visible_block_pairs(seq_q: int, seq_k: int, q_block: int, kv_block: int, causal: bool) -> int:
    """Query-block x key-block pairs the blockwise attention computes (causal: not all-future)."""
    qb, kb = block_size(seq_q, q_block), block_size(seq_k, kv_block)
    return sum(1 for i in range(seq_q // qb) for j in range(seq_k // kb)
               if not (causal and j * kb > (i + 1) * qb - 1)) * qb * kb


def expected_comm_bytes(cfg: ModelConfig, layout: Layout, batch_chunks: int = 1,
                        spread_axes: tuple[str, ...] = ()) -> dict[str, float]:
    """Bytes per device per forward pass by collective op (payload x executions), from the math.

    Payload conventions match `helix_jax.analysis.hlo.Collective.payload_bytes`: all-reduce,
    reduce-scatter, all-to-all and collective-permute count the operand, all-gather the result.
    Small per-layer statistics (MoE drop counts, a few scalars) are left out.
    """
    b = DTYPE_BYTES[cfg.dtype]
    L, S, D, H, d = cfg.n_layers, cfg.seq, cfg.d_model, cfg.n_heads, cfg.head_dim
    B = cfg.batch // layout.size("batch")  # sequences per data replica
    sp, cp = layout.size("act_seq"), layout.size("cp_seq")
    x = B * S * D * b // cp  # one [B, S, D] activation of a data replica, this context shard's
    out: dict[str, float] = {}

    def add(op: str, nbytes: float) -> None:
        out[op] = out.get(op, 0.0) + nbytes

    if cp > 1:  # keys and values of the shard's S/K positions: around the ring or gathered
        p, M = layout.size("layers"), layout.options.get("microbatches", 1)
        runs = (M + p - 1) / M if p > 1 else 1
        kv = 2 * B * (S // cp) * (cfg.kv_heads // min(layout.size("heads"), cfg.kv_heads)) * d * b
        if layout.options.get("attention", "ring") == "allgather":
            add("all-gather", (L // p) * runs * kv * cp)
        else:
            add("collective-permute", (L // p) * runs * kv * (cp - 1))
        # (the output put back in order once per step, by whatever collectives XLA picks for the
        # permutation, is left out, like the small statistics)

    if spread_axes:  # each batch chunk is gathered from the spread input
        add("all-gather", x / sp)

    kind = layout.kind
    if kind in ("helix", "helix-ep"):
        m, h = layout.size("head_dim"), H // layout.size("heads")
        if layout.size("heads", "head_dim") > 1:
            add("all-reduce", 2 * L * x)  # attention output and FFN/MoE combine, over all m x n
        core = layout.options["core"]
        if m > 1 and core == "score_psum":
            pairs = visible_block_pairs(S, S, cfg.q_block, cfg.kv_block, cfg.causal)
            add("all-reduce", L * B * h * pairs * b)
        elif m > 1 and core == "seq_a2a":
            add("all-to-all", 2 * L * B * S * h * (d // m) * b)  # q out, o back
            add("all-gather", 2 * L * B * S * h * d * b)  # k, v to full d
        elif m > 1 and core == "qk_gather":
            add("all-gather", 2 * L * B * S * h * d * b)
    elif kind == "tp-pp":
        p, M = layout.size("layers"), layout.options["microbatches"]
        runs = (M + p - 1) / M  # GPipe: every stage runs every step
        per_layer = 2 * (L // p) * runs * x
        if layout.size("heads") > 1:
            if sp > 1:
                add("reduce-scatter", per_layer)
                add("all-gather", per_layer)
            else:
                add("all-reduce", per_layer)
        if p > 1:
            add("collective-permute", runs * x / sp)
            add("all-reduce", x / sp)  # the last stage's output to every stage
    elif kind == "ep":
        K = layout.options["chunks"]
        tokens = B // batch_chunks * S  # B is already per device: ep shards the batch
        slots = math.ceil(capacity(tokens, cfg.top_k, cfg.n_experts, cfg.capacity_factor) / K) * K
        add("all-to-all", 2 * L * batch_chunks * cfg.n_experts * slots * D * b)
    elif kind == "dp" and layout.options.get("fsdp"):
        hd, F = H * d, cfg.d_ff
        layer = 4 * D * hd + 2 * D * F + 4 * D + D  # every layer parameter with an embed dim
        add("all-gather", (L * layer + 2 * D) * 4)  # float32 master weights
    return out
