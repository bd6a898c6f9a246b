"""The model's parameter tree, known without building it: the NNX graph, each parameter's shape
(float32 masters) and logical axis names, and its size. Cached per config (the batch size shapes
no parameter)."""

from __future__ import annotations

import functools
from typing import Any

import jax
from flax import nnx

from helix_jax.config import ModelConfig
from helix_jax.nn.transformer import Transformer

Params = dict[str, Any]


def _is_var(v) -> bool:
    return isinstance(v, nnx.Variable)


def _abstract(cfg: ModelConfig):
    """graphdef, parameter shapes and logical axes of `cfg`'s model. The batch size shapes no
    parameter, so configs that differ only in it share one entry: a training step's chunk (or a
    pipeline's microbatch) does not build the model again while it is traced."""
    return _abstract_of(cfg.replace(batch=1))


@functools.lru_cache(maxsize=32)
def _abstract_of(cfg: ModelConfig):
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    logical = jax.tree.map(lambda v: tuple(v.get_metadata()["out_sharding"]), state, is_leaf=_is_var)
    shapes = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), state, is_leaf=_is_var)
    return graphdef, nnx.to_pure_dict(shapes), nnx.to_pure_dict(logical)


def graphdef(cfg: ModelConfig):
    return _abstract(cfg)[0]


def param_shapes(cfg: ModelConfig) -> Params:
    """The parameter tree as ShapeDtypeStructs (float32 master weights)."""
    return _abstract(cfg)[1]


def logical_axes(cfg: ModelConfig) -> Params:
    """The parameter tree's logical axis names, e.g. ('layers', 'embed', 'heads', 'head_dim')."""
    return _abstract(cfg)[2]


def param_bytes(cfg: ModelConfig) -> int:
    """Bytes of the float32 master parameters of `cfg`'s model."""
    return sum(s.size * s.dtype.itemsize for s in jax.tree.leaves(param_shapes(cfg)))


@functools.lru_cache(maxsize=2)
def init_on_one_device(cfg: ModelConfig, seed: int) -> Params:
    """A small model's parameters drawn on one device, as host arrays (placing host arrays on a
    layout costs nothing to compile; resharding device arrays does). Callers only read them."""
    create = jax.jit(lambda: nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed)))))
    return jax.device_get(create())
