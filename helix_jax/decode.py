"""Prefill and decode with a KV cache placed by the layout, for real: `helix decode`.

The input is what `helix forward` draws (embeddings [B, S, D], or tokens for a model with a
vocabulary). A prefill over the first P positions fills the cache; then each of the S - P decode
steps takes the next position's input (teacher forcing), so the outputs are exactly the forward
pass's and can be checked the same way. Both are one program (`Sharded.step_fn`, T new tokens at
a position), compiled once per shape before anything is timed: time to first token is the
prefill, the per-token latency each decode step's, timed with `block_until_ready`.

Both run with the weights a server keeps and the projection prices: copies in the model's dtype,
or with `--weights float8` float8_e4m3fn matmul weights with per-output-channel scales,
dequantised at each matmul (`serving_params`, nn/float8.py; the float32 masters stay with
training). Greedy generation (`generate`) is one
program: the prefill, then a `lax.fori_loop` of decode steps and argmaxes on the device, so the
host waits once per call, not once per token.
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
from helix_jax.nn.float8 import matmul


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
    params = sharded.abstract_serving_params()
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
    params = serving_params(sharded, params)
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


def serving_params(sharded: Sharded, params):
    """The parameters in the model's dtype (a no-op for a float32 model), or under float8
    weights quantised, on their shards: the weights a prefill or decode step reads, as the
    decode projection prices them (`Sharded.serving_params`)."""
    return sharded.serving_params(params)


def next_token(params, h: jax.Array) -> jax.Array:
    """The greedy next token after a step: h [B, T, D] (the step's final hidden states) -> [B]
    int32, the argmax of the last position's logits through the LM head, or the embedding table
    transposed where the model ties them (serving weights; XLA partitions it as the weights are
    sharded)."""
    w = params["head"]["w"] if "head" in params else params["embed"]["table"].T  # [D, V]
    logits = matmul("bd,dv->bv", h[:, -1].astype(jnp.float32), w, jnp.float32)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def generate_fn(sharded: Sharded, prompt_len: int, n_new: int):
    """One jitted program (params, cache, prompt tokens [B, P]) -> new tokens [B, n_new] int32:
    the prefill, then n_new - 1 decode steps in a `lax.fori_loop`, each feeding back the argmax
    of the last position's logits (`next_token`); the cache is updated in place inside the
    loop."""
    step = sharded.step_fn()

    def run(params, cache, prompt):
        h, cache, _ = step(params, cache, prompt, jnp.int32(0))
        tokens = jnp.zeros((prompt.shape[0], n_new), jnp.int32)
        tokens = tokens.at[:, 0].set(next_token(params, h))

        def body(i, carry):
            tokens, cache = carry
            last = jax.lax.dynamic_slice_in_dim(tokens, i - 1, 1, axis=1)  # [B, 1]
            h, cache, _ = step(params, cache, last, prompt_len + i - 1)
            return tokens.at[:, i].set(next_token(params, h)), cache

        tokens, _ = jax.lax.fori_loop(1, n_new, body, (tokens, cache))
        return tokens

    return jax.jit(run)


@dataclass
class Generated:
    """Greedy tokens [B, n_new] (on the host) and the seconds of the one call that made them."""

    tokens: np.ndarray
    seconds: float
    compile_s: float

    @property
    def ms_per_token(self) -> float:
        """Mean wall time per generated token, the prefill included (one host sync per call)."""
        return 1e3 * self.seconds / self.tokens.shape[1]


def generate(sharded: Sharded, params, prompt: jax.Array, n_new: int) -> Generated:
    """Greedy generation from token prompts [B, P] (a model with a vocabulary): n_new tokens, in
    one program on the device (`generate_fn`), timed after its compilation."""
    cfg = sharded.cfg
    if not cfg.vocab:
        raise ValueError(f"{cfg.name} has no vocabulary: --generate needs a model file with "
                         f"vocab > 0")
    if n_new < 1:
        raise ValueError(f"--generate {n_new}: generate at least one token")
    if prompt.shape[1] + n_new > cfg.seq:
        raise ValueError(f"prompt ({prompt.shape[1]}) + --generate {n_new} is more than "
                         f"--seq {cfg.seq}; raise --seq or generate fewer tokens")
    params = serving_params(sharded, params)
    cache = sharded.init_cache(cfg.seq)
    start = time.perf_counter()
    compiled = generate_fn(sharded, prompt.shape[1], n_new).lower(params, cache, prompt).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    tokens = jax.device_get(compiled(params, cache, prompt))  # the one host sync
    return Generated(np.asarray(tokens), time.perf_counter() - start, compile_s)
