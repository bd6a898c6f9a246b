"""Prefill and decode with a KV cache placed by the layout, for real: `helix decode`.

The input is what `helix forward` draws (embeddings [B, S, D], or tokens for a model with a
vocabulary). A prefill over the first P positions fills the cache; then each of the S - P decode
steps takes the next position's input (teacher forcing), so the outputs are exactly the forward
pass's and can be checked the same way. Both are one program (`Sharded.step_fn`, T new tokens at
a position), compiled once per shape before anything is timed: time to first token is the
prefill, the per-token latency each decode step's, timed with `block_until_ready`.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from helix_jax import options
from helix_jax.model import Sharded


@dataclass
class DecodeRun:
    """Outputs [B, S, D] (float32, on the host) and the timings of one prefill + decode."""

    output: np.ndarray
    ttft_s: float
    step_s: list[float]
    compile_s: float

    @property
    def median_s(self) -> float:
        return statistics.median(self.step_s) if self.step_s else float("nan")

    @property
    def p90_s(self) -> float:
        return float(np.percentile(self.step_s, 90)) if self.step_s else float("nan")


def compile_decode(sharded: Sharded, prompt_len: int, step=None) -> tuple:
    """The prefill (P positions) and one-position decode programs, compiled for abstract
    arguments (nothing allocated: their memory can be checked first), and the seconds it took."""
    from jax.sharding import NamedSharding

    cfg = sharded.cfg
    options.prompt_len(prompt_len, cfg.seq)
    step = step or sharded.step_fn()
    mesh = sharded.mesh
    cache = jax.ShapeDtypeStruct(sharded.cache_shape(cfg.seq), jnp.dtype(cfg.dtype),
                                 sharding=NamedSharding(mesh, sharded.cache_spec))
    caches = {"k": cache, "v": cache}
    x_sharding = NamedSharding(mesh, sharded.step_input_spec)

    def x(positions):
        full = sharded.abstract_input()
        return jax.ShapeDtypeStruct((full.shape[0], positions, *full.shape[2:]), full.dtype,
                                    sharding=x_sharding)

    start = time.perf_counter()
    params = sharded.abstract_params()
    pos = jax.ShapeDtypeStruct((), jnp.int32)
    prefill = step.lower(params, caches, x(prompt_len), pos).compile()
    one = step.lower(params, caches, x(1), pos).compile()
    return prefill, one, time.perf_counter() - start


def run_decode(sharded: Sharded, params, x: jax.Array, prompt_len: int,
               step=None, programs: tuple | None = None) -> DecodeRun:
    """Prefill positions [0, P), then decode P .. S - 1 one position at a time (`step`: a
    `sharded.step_fn()` to reuse across runs; `programs`: what `compile_decode` returned)."""
    from jax.sharding import NamedSharding

    cfg = sharded.cfg
    options.prompt_len(prompt_len, cfg.seq)
    prefill, one, compile_s = programs or compile_decode(sharded, prompt_len, step)
    x_sharding = NamedSharding(sharded.mesh, sharded.step_input_spec)
    cache = sharded.init_cache(cfg.seq)
    pos0 = jnp.int32(0)
    prompt = jax.device_put(x[:, :prompt_len], x_sharding)
    start = time.perf_counter()
    y, cache, _ = jax.block_until_ready(prefill(params, cache, prompt, pos0))
    ttft = time.perf_counter() - start
    outs, times = [np.asarray(y, np.float32)], []
    for t in range(prompt_len, cfg.seq):
        xt = jax.device_put(x[:, t:t + 1], x_sharding)
        start = time.perf_counter()
        y, cache, _ = jax.block_until_ready(one(params, cache, xt, jnp.int32(t)))
        times.append(time.perf_counter() - start)
        outs.append(np.asarray(y, np.float32))
    return DecodeRun(np.concatenate(outs, axis=1), ttft, times, compile_s)


def generate(sharded: Sharded, params, prompt: jax.Array, n_new: int) -> np.ndarray:
    """Greedy generation from token prompts [B, P] (a model with a vocabulary): n_new tokens."""
    cfg = sharded.cfg
    if not cfg.vocab:
        raise ValueError(f"{cfg.name} has no vocabulary: --generate needs a model file with "
                         f"vocab > 0")
    total = prompt.shape[1] + n_new
    if total > cfg.seq:
        raise ValueError(f"prompt ({prompt.shape[1]}) + --generate {n_new} is more than "
                         f"--seq {cfg.seq}; raise --seq or generate fewer tokens")
    step, cache = sharded.step_fn(), sharded.init_cache(cfg.seq)
    head = jax.jit(lambda w, h: jnp.argmax(h[:, -1].astype(jnp.float32) @ w.astype(jnp.float32),
                                           axis=-1).astype(jnp.int32))
    h, cache, _ = step(params, cache, prompt, jnp.int32(0))
    tokens = [head(params["head"]["w"], h)]
    for t in range(prompt.shape[1], total - 1):
        h, cache, _ = step(params, cache, tokens[-1][:, None], jnp.int32(t))
        tokens.append(head(params["head"]["w"], h))
    return np.stack([np.asarray(t) for t in tokens], axis=1)
