"""Flax NNX modules: the model's math, written against logical axis names only."""

from helix_jax.nn.attention import Attention
from helix_jax.nn.mlp import MLP
from helix_jax.nn.norm import LayerNorm
from helix_jax.nn.transformer import Block, Transformer

__all__ = ["Attention", "Block", "LayerNorm", "MLP", "Transformer"]
