"""On a GPU: where a decode step's time goes. Traces `--steps` teacher-forced decode steps of a
model (jax.profiler, Perfetto JSON) and sums the GPU's kernels: how many run per step, how long
they keep the GPU busy, the busiest kernels, and the step's wall time against the HBM floor of its
weights and cache.

    python experiments/gpu_decode_trace.py --out results                 # llama3-8b, batch 1
    python experiments/gpu_decode_trace.py --out /tmp --model tiny-llama  # a quick check (CPU)

Writes gpu_decode_trace.json and gpu_decode_trace.md.
"""

from __future__ import annotations

import collections
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments._cli import parse_args  # noqa: E402
from helix_jax.config import resolve_model  # noqa: E402
from helix_jax.decode import compile_decode, serving_params  # noqa: E402
from helix_jax.layouts import parse_layout  # noqa: E402
from helix_jax.model import Sharded, random_input  # noqa: E402
from helix_jax.report.provenance import generated_by, markdown_header  # noqa: E402


def device_events(trace: dict) -> list[dict]:
    """Complete events ('X') of the trace's device processes (kernels, copies)."""
    names = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"]
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    device = {pid for pid, n in names.items() if "/device:" in n and "CPU" not in n.upper()}
    return [e for e in trace["traceEvents"] if e.get("ph") == "X" and e.get("pid") in device]


def summarise(events: list[dict], steps: int) -> dict:
    """Kernels per step, their summed busy time per step, the span they cover, the top kernels."""
    if not events:
        return {"kernels_per_step": 0, "busy_ms_per_step": 0.0, "span_ms_per_step": 0.0,
                "top": []}
    by_name: dict[str, list[float]] = collections.defaultdict(list)
    for e in events:
        by_name[e["name"]].append(float(e.get("dur", 0)))
    start = min(e["ts"] for e in events)
    end = max(e["ts"] + e.get("dur", 0) for e in events)
    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:15]
    return {"kernels_per_step": len(events) / steps,
            "busy_ms_per_step": sum(float(e.get("dur", 0)) for e in events) / 1e3 / steps,
            "span_ms_per_step": (end - start) / 1e3 / steps,
            "top": [{"name": n[:120], "count_per_step": len(d) / steps,
                     "ms_per_step": sum(d) / 1e3 / steps} for n, d in top]}


def main(argv: list[str] | None = None) -> int:
    args, out = parse_args("gpu_decode_trace", __doc__, argv, lambda p: (
        p.add_argument("--model", default="llama3-8b"),
        p.add_argument("--batch", type=int, default=1),
        p.add_argument("--seq", type=int, default=2048),
        p.add_argument("--steps", type=int, default=8)))
    cfg = resolve_model(args.model, batch=args.batch, seq=args.seq, dtype="bfloat16")
    sharded = Sharded.build(cfg, parse_layout("single"))
    prompt_len = cfg.seq - args.steps - 8
    prefill, one, _ = compile_decode(sharded, prompt_len)
    params = serving_params(sharded, sharded.init(0))
    x = jax.device_put(random_input(cfg, 0).astype(sharded.input_dtype), sharded.input_sharding)
    cache = sharded.init_cache(cfg.seq)
    _, cache, _ = jax.block_until_ready(prefill(params, cache, x[:, :prompt_len], jnp.int32(0)))
    pos = prompt_len
    for _ in range(4):  # warm-up steps
        _, cache, _ = jax.block_until_ready(one(params, cache, x[:, pos:pos + 1], jnp.int32(pos)))
        pos += 1
    walls = []
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(args.steps):
                start = time.perf_counter()
                _, cache, _ = jax.block_until_ready(
                    one(params, cache, x[:, pos:pos + 1], jnp.int32(pos)))
                walls.append(time.perf_counter() - start)
                pos += 1
        found = list(Path(tmp).rglob("perfetto_trace.json.gz"))
        trace = json.load(gzip.open(found[0], "rt")) if found else {"traceEvents": []}
    weight_bytes = sum(np.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(params))
    cache_bytes = 2 * np.prod(sharded.cache_shape(cfg.seq)) * 2
    report = {"generated_by": generated_by("python experiments/gpu_decode_trace.py "
                                           + " ".join(argv or sys.argv[1:])),
              "device": str(jax.devices()[0].device_kind), "model": cfg.name,
              "batch": cfg.batch, "context": cfg.seq,
              "wall_ms_per_step": statistics.median(walls) * 1e3,
              "weight_gb": float(weight_bytes) / 1e9, "cache_gb": float(cache_bytes) / 1e9,
              **summarise(device_events(trace), args.steps)}
    (out / "gpu_decode_trace.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = ["# A decode step on the GPU, traced\n", markdown_header(report["generated_by"]),
             f"\n{report['device']}: {cfg.name}, batch {cfg.batch}, {cfg.seq} cached positions, "
             f"bf16 weights ({report['weight_gb']:.1f} GB) and cache "
             f"({report['cache_gb']:.2f} GB). Median wall time per step "
             f"{report['wall_ms_per_step']:.2f} ms; per step the device ran "
             f"{report['kernels_per_step']:.0f} kernels, busy {report['busy_ms_per_step']:.2f} "
             f"ms of a {report['span_ms_per_step']:.2f} ms span.\n",
             "| kernel | per step | ms per step |", "|---|---|---|"]
    lines += [f"| `{t['name']}` | {t['count_per_step']:.0f} | {t['ms_per_step']:.3f} |"
              for t in report["top"]]
    (out / "gpu_decode_trace.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
