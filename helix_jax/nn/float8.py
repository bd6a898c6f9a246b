"""FP8 for serving (`--weights float8`): each matmul weight stored as float8_e4m3fn values with
float32 per-output-channel scales, and each matmul with such a weight run W8A8, its activation
rounded to float8_e4m3fn too, as serving stacks with FP8 weights run them (TensorRT-LLM, vLLM on
H100: FP8 x FP8 GEMMs, activations quantised per tensor).

    scale = amax(|W|) / 448 over the axes the matmul contracts (1 where a channel is all zero)
    q     = round_to_e4m3(W / scale)            W ≈ q · scale

One scale per output channel: per column of W1, W3 [D, F] and of the LM head [D, V], per
(head, dim) of W_q, W_k, W_v [D, H, d], per model dim of W_o [H, d, D] and W2 [F, D]; each
stacked layer and each expert has its own. A scale has the weight's shape with the contracted
axes of size 1, so its logical axes are the weight's with those set to None: it is sharded like
the weight's output channels and each device holds the scales of its own columns.

Quantised: the attention projections wq, wk, wv, wo, the FFN's w1, w2, w3 (dense, shared and
routed experts) and the untied LM head. Kept in the model's dtype: the embedding table (a row
lookup, and the tied head), learned positions, norm scales, biases and the MoE router.

`matmul(spec, x, w, dtype)` is where every layer multiplies by a weight: an einsum with the
weight cast to `dtype`, or for a `Float8Weight`

    x_q = round_to_e4m3(x / s_x)   s_x = amax(|x|) / 448, one dynamic scale for the local tensor
    y   = ((x_q · s_x) @ q) · scale     (the weight's per-output-channel scale after the dot)

so that both operands of the dot are float8 values converted to `dtype` with at most a scalar
scale: the quantise/dequantise pattern XLA's GPU GEMM rewriter turns into an FP8 GEMM (cuBLASLt,
scales as per-tensor operands; the output-channel scaling an elementwise epilogue). Not checked
on a GPU here. On a CPU the float8 values are converted up and the matmul runs in `dtype`, so the
outputs carry the rounding of both operands. The projection prices these matmuls at the
profile's FP8 rate (`Hardware.fp8_flops_per_s`, the 16-bit rate on a GPU without FP8) and reads
both operands at one byte per element (analysis/costmodel/roofline.py). `operand(w, dtype)`
(the dequantised weight, q · scale) remains for weight-only uses.

Rounding to e4m3 (3 mantissa bits) moves a value by at most 2^-4 of itself, or by 2^-10 · scale
below e4m3's normal range (|W| < 2^-6 · scale); that is the round-trip bound the tests check.
A per-tensor activation scale flushes values below 2^-9 · amax to zero: harmless for activations
of a normalised model, whose outliers set amax (the tests bound the end-to-end error).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
FLOAT8 = jnp.float8_e4m3fn
E4M3_MAX = 448.0  # the largest finite float8_e4m3fn
MATMUL_WEIGHTS = frozenset({"wq", "wk", "wv", "wo", "w1", "w2", "w3"})  # and the head's `w`
# The scope the dequantisation runs under: the roofline (analysis/costmodel/roofline.py) prices
# what the compiled program keeps under it as the prologue of the matmul it feeds.
DEQUANT_SCOPE = "float8_dequantize"
# The scope of an activation's quantisation (`quantize_activation`): the roofline leaves its
# kernels out (a serving GPU fuses them into the kernel that produced the activation) and reads
# the activation at one byte per element in the matmul it feeds.
ACTIVATION_SCOPE = "float8_activation"
# The scope of a W8A8 product's per-output-channel scaling (`matmul`): a GEMM epilogue on a GPU,
# left out of the roofline where XLA:CPU makes it a kernel of its own.
OUTPUT_SCALE_SCOPE = "float8_output_scale"
PER_MATRIX = ("layers", "expert")  # axes that index separate matrices: each keeps its scales


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Float8Weight:
    """A weight as float8_e4m3fn values `q` (the weight's shape) and float32 per-output-channel
    scales `scale` (the weight's shape, contracted axes of size 1). A pytree of the two: it is
    sharded, stacked, scanned over layers and passed through shard_map like any parameter."""

    q: Array
    scale: Array

    @property
    def shape(self) -> tuple[int, ...]:
        return self.q.shape

    @property
    def ndim(self) -> int:
        return self.q.ndim

    def __getitem__(self, index):  # `param[...]` reads a Variable's whole value
        if index is not Ellipsis:
            raise TypeError("a Float8Weight is read whole (w[...]); slice its q and scale")
        return self

    def dequantize(self, dtype) -> Array:
        """q · scale in `dtype`. FSDP all-gathers a weight along `embed` as one pytree
        (`transformer.gather_fsdp`): where `embed` is contracted, the scale's size-1 axis comes
        back as one equal copy per shard, and one copy is kept."""
        scale = self.scale
        if scale.shape != self.q.shape:
            scale = scale[tuple(slice(0, 1) if s not in (1, n) else slice(None)
                                for s, n in zip(scale.shape, self.q.shape))]
        with jax.named_scope(DEQUANT_SCOPE):
            return self.q.astype(dtype) * scale.astype(dtype)


def operand(w: Array | Float8Weight, dtype) -> Array:
    """A weight as a matmul operand in `dtype`: cast, or dequantised (module doc)."""
    if isinstance(w, Float8Weight):
        return w.dequantize(dtype)
    return w.astype(dtype)


def is_float8(w: Any) -> bool:
    """Whether a weight is stored in float8 (a `Float8Weight`)."""
    return isinstance(w, Float8Weight)


def quantize_activation(x: Array) -> Array:
    """x rounded through float8_e4m3fn with one dynamic scale for the whole (local) tensor,
    amax(|x|) / 448 (1 where x is all zero), returned in x's dtype as q · scale: the
    quantise-dequantise pair a W8A8 GEMM's activation operand is written as."""
    with jax.named_scope(ACTIVATION_SCOPE):
        amax = jnp.max(jnp.abs(x)).astype(jnp.float32)
        scale = jnp.where(amax > 0, amax / E4M3_MAX, 1.0)
        q = jnp.clip(x.astype(jnp.float32) / scale, -E4M3_MAX, E4M3_MAX).astype(FLOAT8)
        return q.astype(x.dtype) * scale.astype(x.dtype)


def matmul(spec: str, x: Array, w: Array | Float8Weight, dtype) -> Array:
    """`jnp.einsum(spec, x, w)` in `dtype`. For a float8 weight, W8A8: x through
    `quantize_activation` (one scalar scale), times the float8 values q converted to `dtype`,
    and the product scaled by the weight's per-output-channel scales after the contraction,
    ((x_q s_x) q) · s_w = (x_q s_x)(q · s_w), so both operands of the dot are float8 values with
    at most a scalar scale: the form of an FP8 GEMM (module doc). `spec` names x's and w's
    dims and the output's, without ellipses (e.g. "bsD,Dhk->bshk")."""
    if not isinstance(w, Float8Weight):
        return jnp.einsum(spec, x, w.astype(dtype))
    inputs, out = spec.split("->")
    xs, ws = inputs.split(",")
    contracted = [i for i, c in enumerate(ws) if c not in out]
    scale = w.scale[tuple(slice(0, 1) if i in contracted else slice(None)
                          for i in range(w.ndim))]  # FSDP's gathered copies: one kept
    kept = "".join(c for i, c in enumerate(ws) if i not in contracted)
    ordered = "".join(c for c in out if c in kept)  # the weight's output dims, in out's order
    scale = jnp.einsum(f"{kept}->{ordered}", jnp.squeeze(scale, tuple(contracted)))
    scale = scale.reshape([scale.shape[ordered.index(c)] if c in kept else 1 for c in out])
    product = jnp.einsum(spec, quantize_activation(x.astype(dtype)), w.q.astype(dtype))
    with jax.named_scope(OUTPUT_SCALE_SCOPE):
        return product * scale.astype(dtype)


def contracted_dims(axes: tuple[str | None, ...]) -> tuple[int, ...]:
    """The dims of a weight with logical `axes` that its matmul sums over: the model dim going in
    (W_q, W_k, W_v, W1, W3, the head), or every dim but the model dim and the stacking axes
    coming out (W_o: heads and head_dim; W2: the hidden dim)."""
    if axes[-1] == "embed":
        return tuple(i for i, a in enumerate(axes) if a not in ("embed", *PER_MATRIX))
    return tuple(i for i, a in enumerate(axes) if a == "embed")


def scale_axes(axes: tuple[str | None, ...]) -> tuple[str | None, ...]:
    """The logical axes of a weight's scales: the weight's, with the contracted ones None."""
    contracted = contracted_dims(axes)
    return tuple(None if i in contracted else a for i, a in enumerate(axes))


def quantize(w: Array, axes: tuple[str | None, ...]) -> Float8Weight:
    """W (float32 masters, logical `axes`) -> Float8Weight with per-output-channel scales."""
    w = w.astype(jnp.float32)
    amax = jnp.max(jnp.abs(w), axis=contracted_dims(axes), keepdims=True)
    scale = jnp.where(amax > 0, amax / E4M3_MAX, 1.0)
    return Float8Weight(jnp.clip(w / scale, -E4M3_MAX, E4M3_MAX).astype(FLOAT8), scale)


def is_matmul_weight(path) -> bool:
    """Whether the parameter at `path` (a pytree key path) is one that float8 quantises."""
    names = [getattr(k, "key", k) for k in path]
    return names[-1] in MATMUL_WEIGHTS or names[-2:] == ["head", "w"]


def served_axes(logical: dict[str, Any]) -> dict[str, Any]:
    """The logical axes of the float8 serving tree: a matmul weight's become
    Float8Weight(q=its axes, scale=its scales' axes); every other parameter keeps its own."""
    return jax.tree_util.tree_map_with_path(
        lambda path, axes: Float8Weight(axes, scale_axes(axes)) if is_matmul_weight(path)
        else axes, logical, is_leaf=lambda t: isinstance(t, tuple))


def quantize_params(params: dict[str, Any], logical: dict[str, Any], dtype) -> dict[str, Any]:
    """The float8 serving tree: matmul weights quantised, every other parameter cast to `dtype`
    (the model's). `logical` is the parameters' tree of logical axes."""
    return jax.tree_util.tree_map_with_path(
        lambda path, w, axes: quantize(w, axes) if is_matmul_weight(path) else w.astype(dtype),
        params, logical)


def dequantize_params(params: dict[str, Any]) -> dict[str, Any]:
    """A serving tree with every Float8Weight as its float32 values q · scale: the weights a
    float8 run computed with, as a plain parameter tree (what an npz stores)."""
    return jax.tree.map(lambda w: w.dequantize(jnp.float32) if isinstance(w, Float8Weight) else w,
                        params, is_leaf=lambda w: isinstance(w, Float8Weight))
