"""`helix calibrate`: measure the local accelerator and write a hardware profile from it.

What one device can measure is measured: the achieved matmul rate over a few shape classes (large
square, skinny, small), the memory bandwidth of a large elementwise pass, and the achieved rate of
each attention core's per-device kernel (the blockwise attention every core runs locally). What it
cannot (links between GPUs, GPUs per node) is copied from a base profile and says so in `sources`.
Timings follow the project's rule: warm-up runs, `block_until_ready`, repeats, the median.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from collections.abc import Callable

SHAPES = {  # name -> (m, n, k): the classes whose rates differ on real hardware
    "large": (4096, 4096, 4096),
    "skinny-k": (4096, 4096, 128),
    "small": (512, 512, 512),
}
QUICK_SHAPES = {"large": (512, 512, 512), "skinny-k": (512, 512, 32), "small": (128, 128, 128)}


def median_seconds(fn: Callable[[], object], warmup: int, repeat: int) -> float:
    """Median wall time of `fn()` (which returns jax arrays) after `warmup` untimed calls."""
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_matmuls(dtype: str, shapes: dict, warmup: int, repeat: int) -> dict[str, float]:
    """Achieved FLOP/s per shape class: 2 m n k / median time."""
    import jax
    import jax.numpy as jnp

    out = {}
    for name, (m, n, k) in shapes.items():
        a = jax.random.normal(jax.random.key(0), (m, k), dtype)
        b = jax.random.normal(jax.random.key(1), (k, n), dtype)
        mm = jax.jit(jnp.matmul)
        out[name] = 2.0 * m * n * k / median_seconds(lambda: mm(a, b), warmup, repeat)
    return out


def measure_memory(n_bytes: int, warmup: int, repeat: int) -> float:
    """Bytes/s of y = x * 2 + 1 over a float32 array of `n_bytes` (read once, written once)."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((n_bytes // 4,), jnp.float32)
    f = jax.jit(lambda x: x * 2 + 1)
    return 2.0 * n_bytes / median_seconds(lambda: f(x), warmup, repeat)


def measure_attention(dtype: str, shape: tuple[int, int, int, int], block: int, warmup: int,
                      repeat: int) -> dict[str, float]:
    """Achieved FLOP/s of the per-device attention kernel of each core, causal, blockwise.

    Per device every core runs `attend` (scores, online softmax, P·V); the cores differ in the
    shapes it sees: score_psum and qk_gather all S queries against S keys, seq_a2a S/m queries
    (here m = 4) against S keys. FLOPs count the visible blocks only.
    """
    import jax

    from helix_jax.nn.attention import attend, block_size

    B, S, h, d = shape
    out = {}
    for core, sq in (("score_psum", S), ("qk_gather", S), ("seq_a2a", S // 4)):
        key = jax.random.key(2)
        q = jax.random.normal(key, (B, sq, h, d), dtype)
        k = jax.random.normal(jax.random.fold_in(key, 1), (B, S, h, d), dtype)
        v = jax.random.normal(jax.random.fold_in(key, 2), (B, S, h, d), dtype)
        offset = S - sq  # the last query block of seq_a2a's split: it sees every key
        qb, kb = block_size(sq, block), block_size(S, block)
        pairs = sum(1 for i in range(sq // qb) for j in range(S // kb)
                    if j * kb <= offset + (i + 1) * qb - 1)
        f = jax.jit(lambda q, k, v: attend(q, k, v, causal=True, q_offset=offset, q_block=block,
                                           kv_block=block))
        flops = 4.0 * B * h * d * pairs * qb * kb
        out[core] = flops / median_seconds(lambda: f(q, k, v), warmup, repeat)
    return out


def calibrate(base: str = "h100-sxm", quick: bool = False, dtype: str | None = None,
              warmup: int = 2, repeat: int = 5) -> tuple[dict, dict]:
    """Measure and return (profile fields ready for JSON, the raw measurements)."""
    import jax

    from helix_jax.analysis.costmodel.hardware import hardware_to_dict, load_hardware

    device = jax.devices()[0]
    dtype = dtype or ("float32" if device.platform == "cpu" else "bfloat16")
    shapes = QUICK_SHAPES if quick else SHAPES
    matmul = measure_matmuls(dtype, shapes, warmup, repeat)
    memory = measure_memory((64 if quick else 1024) << 20, warmup, repeat)
    attn_shape = (1, 1024, 4, 64) if quick else (4, 8192, 16, 128)
    attention = measure_attention(dtype, attn_shape, 256 if quick else 1024, warmup, repeat)
    profile = hardware_to_dict(load_hardware(base))
    when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    where = f"measured by helix calibrate on {device.device_kind} ({device.platform}), {when}"
    stats = getattr(device, "memory_stats", lambda: None)() or {}
    profile.update(
        name=f"calibrated-{device.platform}",
        flops_per_s=max(matmul.values()),
        peak_flops_per_s=max(max(matmul.values()), profile["peak_flops_per_s"]
                             if device.platform != "cpu" else 0.0),
        hbm_bytes_per_s=memory,
        attention_flops_per_s=max(attention.values()),
        fp8_flops_per_s=0.0,
        notes=f"{where}; links and node shape from the {base} profile")
    if stats.get("bytes_limit"):
        profile["hbm_capacity_bytes"] = float(stats["bytes_limit"])
    measured = {"flops_per_s", "peak_flops_per_s", "hbm_bytes_per_s", "attention_flops_per_s",
                "fp8_flops_per_s"}
    sources = {k: f"from the {base} profile: {v}" for k, v in profile["sources"].items()
               if k not in measured}
    sources.update({
        "flops_per_s": f"{where}: best {dtype} matmul rate over " + ", ".join(
            f"{n} {m}x{nn}x{k}" for n, (m, nn, k) in shapes.items()),
        "peak_flops_per_s": ("the base profile's peak (datasheet)" if device.platform != "cpu"
                             else f"{where}: no datasheet peak on CPU, the best measured rate"),
        "hbm_bytes_per_s": f"{where}: y = 2x + 1 over a float32 array, read + write",
        "attention_flops_per_s": f"{where}: blockwise causal attention {attn_shape} (B, S, h, d)",
        "fp8_flops_per_s": "not measured: float8 matmuls are priced at the measured 16-bit rate",
    })
    profile["sources"] = sources
    raw = {"device": device.device_kind, "platform": device.platform, "dtype": dtype,
           "matmul_flops_per_s": matmul, "memory_bytes_per_s": memory,
           "attention_flops_per_s": attention, "warmup": warmup, "repeat": repeat}
    return profile, raw


def cmd_calibrate(args) -> int:
    """`helix calibrate` once the CLI has checked its options and paths."""
    import json

    from helix_jax.files import atomic_output

    profile, raw = calibrate(args.base, args.quick, args.dtype, args.warmup, args.repeat)
    with atomic_output(args.out) as tmp:
        tmp.write_text(json.dumps({**profile, "measurements": raw}, indent=1) + "\n")
    for name, rate in raw["matmul_flops_per_s"].items():
        print(f"matmul {name:<10} {rate / 1e12:10.3f} TFLOP/s")
    print(f"memory            {raw['memory_bytes_per_s'] / 1e9:10.2f} GB/s")
    for core, rate in raw["attention_flops_per_s"].items():
        print(f"attention {core:<10} {rate / 1e12:7.3f} TFLOP/s")
    print(f"wrote {args.out} (use it as --hardware {args.out})")
    return 0



