"""Attention as one library call, where a device's share of the work is ordinary attention.

`jax.nn.dot_product_attention` is the fused kernel a GPU runs well (cuDNN's flash attention) and
the kernel the cost model prices (FlashAttention-3's rate). The blockwise scan in `attention.py`
stays where the math needs what the library call does not give: partial scores summed over
head-dim shards (`score_psum`), partial outputs with their log-sum-exps (`kvp`, context
parallelism's ring), values narrower than queries (`qk_gather`), and a decode step that reads one
layer of the stacked cache in place. `Comm.attention_kernel` picks the path:
  auto       (the runtime's default) the library call on a GPU; on a CPU only for score matrices
             of at most CPU_FUSED_MAX_SCORES, since XLA:CPU runs the blockwise scan as fast or
             faster from there on (see below)
  fused      the library call wherever it applies
  blockwise  the scan (what the cost model compiles: on a CPU the library call materialises the
             whole score matrix, which a GPU's fused kernel never does)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from helix_jax.enums import AttentionKernel
from helix_jax.layouts import Layout
from helix_jax.parallel.context import AXIS

Array = jax.Array

# The scope of the library call inside the attention core: tests read it off the program.
FUSED_SCOPE = "fused_attention"
# What jax's cuDNN path accepts (jax._src.cudnn.fused_attention_stablehlo,
# check_is_flash_attention): 16-bit operands, a head dim that is a multiple of 8 and at most 128
# (256 from Hopper on; 128 here so the rule holds on every GPU), and with a mask, which reaches
# cuDNN as a bias, even sequence lengths. Anything else runs XLA's implementation.
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
CUDNN_MAX_HEAD_DIM = 128
# Forward + backward of small-dense (batch 2, float32, one device) on 2 CPU cores, median of 5,
# library call vs scan: 225 vs 215 ms at S = 256, 660 vs 457 at 512, 1169 vs 773 at 768,
# 2181 vs 1268 at 1024. The two meet at S = 256, so a CPU takes the call up to 256 x 256 scores.
CPU_FUSED_MAX_SCORES = 256 * 256


def implementation(q: Array, k: Array, masked: bool) -> str:
    """cuDNN on a GPU where it supports the operands, else XLA's implementation. Chosen here:
    jax's `implementation=None` means XLA on every backend (jax 0.10.2's source says so)."""
    d = q.shape[-1]
    if jax.default_backend() != "gpu" or q.dtype not in CUDNN_DTYPES:
        return "xla"
    if d > CUDNN_MAX_HEAD_DIM or d % 8 or (masked and (q.shape[1] % 2 or k.shape[1] % 2)):
        return "xla"
    return "cudnn"


def fused_attend(q: Array, k: Array, v: Array, *, causal: bool,
                 q_offset: int | Array = 0) -> Array:
    """q [B, Sq, h, d] (already scaled), k and v [B, Sk, g, d] (g dividing h) -> [B, Sq, h, d]
    in q's dtype, query i at position q_offset + i and key j at position j."""
    Sq, Sk = q.shape[1], k.shape[1]
    aligned = isinstance(q_offset, int) and q_offset == 0 and Sq == Sk
    mask = None
    if causal and not aligned:  # queries past the first keys, or a cache with unwritten slots
        mask = ((q_offset + jnp.arange(Sq))[:, None] >= jnp.arange(Sk)[None, :])[None, None]
    with jax.named_scope(FUSED_SCOPE):
        return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=1.0,
                                            is_causal=causal and aligned,
                                            implementation=implementation(q, k, mask is not None))


def use_fused(kernel: str, q: Array, keys: int, value_width: int) -> bool:
    """Whether queries q [B, Sq, h, d] over `keys` keys run the library kernel: values as wide
    as queries (the call's contract), and the kernel asked for, or under auto the faster one on
    this backend."""
    if kernel == AttentionKernel.BLOCKWISE or q.shape[-1] != value_width:
        return False
    if jax.default_backend() == "cpu" and q.dtype == jnp.float16:
        return False  # the XLA implementation asks for an F16_F16_F32 dot XLA:CPU cannot run
    if kernel == AttentionKernel.FUSED or jax.default_backend() == "gpu":
        return True
    return q.shape[1] * keys <= CPU_FUSED_MAX_SCORES


def runtime_kernel(layout: Layout, mode: str, partitioner: str = "shard_map") -> str:
    """Which kernel a device's attention runs in `helix forward/train/decode` of `layout` on a
    GPU (auto), and, where it is the blockwise scan, the math that keeps it there."""
    core = layout.options.get("core", "score_psum")
    if partitioner == "gspmd":
        reason = "gspmd: XLA partitions the global blockwise program"
    elif mode == "decode":
        reason = "a decode step reads one layer of the stacked KV cache in place"
    elif layout.mesh_axes("kv_seq"):
        reason = "kvp combines partial outputs by their log-sum-exps"
    elif layout.mesh_axes(AXIS) and mode != "prefill":
        reason = "context parallelism combines partial outputs by their log-sum-exps"
    elif layout.mesh_axes("head_dim") and core == "score_psum":
        reason = "score_psum sums partial scores over the head-dim shards"
    elif layout.mesh_axes("head_dim") and core == "qk_gather":
        reason = "qk_gather's values are narrower than its queries"
    else:
        return "fused: jax.nn.dot_product_attention (cuDNN for 16-bit operands on a GPU)"
    return f"blockwise online-softmax scan ({reason})"
