"""Time the forward pass of a model on a layout on the local mesh, the way the paper measures.

The paper's method (MoE report, §5.2): warm-up batches, then timed batches with a device
synchronisation before and after, the extremes trimmed from the average. Here: `warmup` untimed
calls after compilation, then `repeat` calls each timed around `jax.block_until_ready`; the median
and a trimmed mean (`trim` of the runs cut from each end) are reported.

On the CPU backend with fake devices (`--xla_force_host_platform_device_count`) every "device" is a
thread pool slice of the same few cores: these timings show that a layout's program runs and what
it costs *on this machine*; they rank nothing about GPUs.
"""

from __future__ import annotations

import math
import statistics
import time

from helix_jax.config import ModelConfig
from helix_jax.layouts import Layout


def trimmed_mean(values: list[float], trim: float = 0.1) -> float:
    """Mean after cutting floor(trim * n) values from each end (at least one value kept)."""
    if not values:
        raise ValueError("trimmed_mean of no values")
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim}")
    ordered = sorted(values)
    cut = min(math.floor(trim * len(ordered)), (len(ordered) - 1) // 2)
    kept = ordered[cut:len(ordered) - cut]
    return sum(kept) / len(kept)


class HostMemoryError(ValueError):
    """The fake-device run would need more host memory than allowed."""


def measure(cfg: ModelConfig, layout: Layout, warmup: int = 2, repeat: int = 5, trim: float = 0.1,
            seed: int = 0, params=None, max_host_bytes: float | None = None) -> dict:
    """Compile and time the forward pass of `cfg` on `layout` over the local devices.

    Returns tokens/s (median and trimmed mean of the timed runs), the run times in seconds, and the
    compile seconds (lowering + compilation, timed apart from the runs). `params` (any placement,
    e.g. from another layout: values do not depend on the layout) skips initialisation from `seed`.
    The program is compiled before anything is allocated; with `max_host_bytes`, a run that would
    need more host memory (devices x (per-device memory + parameters)) raises HostMemoryError.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    import jax
    import numpy as np

    from helix_jax.analysis.hlo.compiled import read_memory
    from helix_jax.model import Sharded, random_input

    sharded = Sharded.build(cfg, layout)
    start = time.perf_counter()
    compiled = sharded.forward_fn().lower(*sharded.abstract_inputs()).compile()
    compile_s = time.perf_counter() - start
    memory = read_memory(compiled)
    host_bytes = layout.devices * (memory["total_bytes"] + memory["argument_bytes"])
    if max_host_bytes is not None and host_bytes > max_host_bytes:
        raise HostMemoryError(
            f"{cfg.name} on {layout.spec} needs about {host_bytes / 1e9:.1f} GB of host memory on "
            f"{layout.devices} fake devices ({memory['total_bytes'] / 1e9:.2f} GB per device read "
            f"off the compiled program, plus the parameters, times {layout.devices}); the limit is "
            f"{max_host_bytes / 1e9:g} GB")

    params = sharded.init(seed) if params is None else sharded.place(params)
    x = jax.device_put(random_input(cfg, seed), sharded.input_sharding)
    jax.block_until_ready((params, x))

    for _ in range(warmup):
        out = jax.block_until_ready(compiled(params, x))
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(params, x))
        times.append(time.perf_counter() - start)
    y = np.asarray(out[0], dtype=np.float32)

    tokens = cfg.batch * cfg.seq
    median = statistics.median(times)
    mean = trimmed_mean(times, trim)
    return {
        "model": cfg.name,
        "layout": layout.spec,
        "devices": layout.devices,
        "platform": jax.devices()[0].platform,
        "tokens_per_step": tokens,
        "warmup": warmup,
        "repeat": repeat,
        "trim": trim,
        "times_s": times,
        "median_s": median,
        "trimmed_mean_s": mean,
        "tokens_per_s_median": tokens / median,
        "tokens_per_s_trimmed_mean": tokens / mean,
        "compile_s": compile_s,
        "memory_bytes_per_device": memory["total_bytes"],
        "host_bytes": host_bytes,
        "output_finite": bool(np.isfinite(y).all()),
    }
