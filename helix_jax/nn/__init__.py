"""Flax NNX modules: the model's math, written against logical axis names only. Every matmul
takes its weight through `float8.operand`: a cast to the compute dtype, or the dequantisation of
a float8 weight (`--weights float8`)."""

from helix_jax.nn.attention import Attention
from helix_jax.nn.mlp import MLP
from helix_jax.nn.norm import LayerNorm
from helix_jax.nn.transformer import Block, Transformer

__all__ = ["Attention", "Block", "LayerNorm", "MLP", "Transformer"]
