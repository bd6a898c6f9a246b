"""What the cost model compiles, behind one object: the programs `project` and `compose` read.

Every projection asks a `Compiler` for its programs, so a caller decides how they are compiled
without touching the projection code: `DIRECT` compiles each one (what `helix project` uses), the
planner passes its `plan_cache.ProgramCache`, which answers from disk when it can. Programs are
compiled for abstract inputs (ShapeDtypeStructs): nothing is allocated.

  program(sharded, mode)  the whole forward pass ("forward") or training step ("train")
  step(sharded, mode)     a prefill of `seq` positions or one decode step at context `seq`
  grad(sharded)           forward + backward of one batch in the model's dtype: one pipeline
                          stage's microbatch, for composed training steps
  update(sharded)         the optimizer update alone, on the layout's shards
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from helix_jax import train
from helix_jax.decode import next_token
from helix_jax.model import Sharded


def compile_program(sharded: Sharded, mode: str) -> Any:
    """The program of `mode` ("forward" or "train") for this sharded model."""
    if mode == "forward":
        return sharded.forward_fn().lower(*sharded.abstract_inputs()).compile()
    return train.compile_train_step(sharded)


def compile_step(sharded: Sharded, mode: str) -> Any:
    """The prefill (all `seq` positions at 0) or one decode step (one position at seq - 1, the
    cache holding seq positions), with the weights a server keeps: 16-bit copies, or under
    float8 weights the float8 values and scales (`Sharded.abstract_serving_params`)."""
    cfg = sharded.cfg
    dt = jnp.dtype(cfg.dtype)
    params = sharded.abstract_serving_params()
    cache_sd = jax.ShapeDtypeStruct(sharded.cache_shape(cfg.seq), dt,
                                    sharding=NamedSharding(sharded.mesh, sharded.cache_spec))
    T = cfg.seq if mode == "prefill" else 1
    shape = (cfg.batch, T) if cfg.vocab else (cfg.batch, T, cfg.d_model)
    x = jax.ShapeDtypeStruct(shape, jnp.int32 if cfg.vocab else dt,
                             sharding=NamedSharding(sharded.mesh, sharded.step_input_spec))
    pos = jnp.int32(0 if mode == "prefill" else cfg.seq - 1)
    return sharded.step_fn().lower(params, {"k": cache_sd, "v": cache_sd}, x, pos).compile()


def compile_head(sharded: Sharded) -> Any:
    """What a served step does after its layers: the LM head on the last position's hidden state
    and the argmax (`decode.next_token`), on the serving weights, as `helix decode --generate`
    runs it after each prefill and decode step (a model with a vocabulary)."""
    cfg = sharded.cfg
    h = jax.ShapeDtypeStruct((cfg.batch, 1, cfg.d_model), jnp.dtype(cfg.dtype),
                             sharding=NamedSharding(sharded.mesh,
                                                    P(*sharded.step_input_spec[:1], None, None)))
    return jax.jit(next_token).lower(sharded.abstract_serving_params(), h).compile()


class Compiler(Protocol):
    """Compiles the programs a projection reads (see the module doc)."""

    def program(self, sharded: Sharded, mode: str) -> Any: ...

    def step(self, sharded: Sharded, mode: str) -> Any: ...

    def head(self, sharded: Sharded) -> Any: ...

    def grad(self, sharded: Sharded) -> Any: ...

    def update(self, sharded: Sharded) -> Any: ...


class DirectCompiler:
    """Compiles every program it is asked for."""

    def program(self, sharded: Sharded, mode: str) -> Any:
        return compile_program(sharded, mode)

    def step(self, sharded: Sharded, mode: str) -> Any:
        return compile_step(sharded, mode)

    def head(self, sharded: Sharded) -> Any:
        return compile_head(sharded)

    def grad(self, sharded: Sharded) -> Any:
        return train.compile_grad_step(sharded, params_in_compute_dtype=True)

    def update(self, sharded: Sharded) -> Any:
        return train.compile_update(sharded)


DIRECT = DirectCompiler()
