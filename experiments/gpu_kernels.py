"""On a GPU: the kernels the cost model prices, measured. Attention as the library call
(`jax.nn.dot_product_attention` through `fused_attend`: cuDNN for 16-bit operands), as XLA's
implementation of the same call, and as the blockwise scan the program ran before; plus the two
ceilings every roofline term divides by (a device-to-device copy for HBM bandwidth, a large bf16
matmul for the achieved matrix rate).

    python experiments/gpu_kernels.py --out results            # on a machine with a GPU
    python experiments/gpu_kernels.py --out /tmp --small       # a quick run of the same code

Timings: warm-up, `block_until_ready`, the median of `--repeat` runs; fresh random inputs.
Writes gpu_kernels.json and gpu_kernels.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from experiments._cli import parse_args  # noqa: E402
from helix_jax.calibrate import measure_matmuls, measure_memory, median_seconds  # noqa: E402
from helix_jax.nn.attention import attend  # noqa: E402
from helix_jax.nn.fused_attention import fused_attend, implementation  # noqa: E402
from helix_jax.report.provenance import generated_by, markdown_header  # noqa: E402


def attention_rows(shape: tuple[int, int, int, int, int], block: int, repeat: int) -> list[dict]:
    """Forward and forward+backward of causal GQA attention (B, S, H, G, d) in bf16, three ways."""
    B, S, H, G, d = shape
    keys = jax.random.split(jax.random.key(S), 4)
    q = (jax.random.normal(keys[0], (B, S, H, d)) / d ** 0.5).astype(jnp.bfloat16)
    k, v = (jax.random.normal(x, (B, S, G, d)).astype(jnp.bfloat16) for x in keys[1:3])
    ct = jax.random.normal(keys[3], (B, S, H, d)).astype(jnp.bfloat16)
    ways = {
        "library call (fused_attend)": lambda q, k, v: fused_attend(q, k, v, causal=True),
        "library call, XLA implementation": lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, scale=1.0, is_causal=True, implementation="xla"),
        f"blockwise scan ({block} x {block} blocks)": lambda q, k, v: attend(
            q, k, v, causal=True, q_block=block, kv_block=block),
    }
    flops = 4 * B * H * d * S * (S + 1) / 2  # causal: the visible half of QKᵀ and PV
    ref = jax.jit(ways[f"blockwise scan ({block} x {block} blocks)"])(q, k, v).astype(jnp.float32)
    rows = []
    for name, fn in ways.items():
        fwd = jax.jit(fn)
        grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * ct), argnums=(0, 1, 2)))
        out = fwd(q, k, v).astype(jnp.float32)
        err = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
        hlo = fwd.lower(q, k, v).compile().as_text()
        t_fwd = median_seconds(lambda: fwd(q, k, v), warmup=1, repeat=repeat)
        t_bwd = median_seconds(lambda: grad(q, k, v), warmup=1, repeat=repeat)
        rows.append({"shape": f"B={B} S={S} H={H} G={G} d={d}", "way": name,
                     "implementation": implementation(q, k, False) if "fused" in name else "",
                     "cudnn_in_program": "cudnn" in hlo.lower(),
                     "forward_ms": t_fwd * 1e3, "forward_tflops": flops / t_fwd / 1e12,
                     "fwd_bwd_ms": t_bwd * 1e3, "fwd_bwd_tflops": 3.5 * flops / t_bwd / 1e12,
                     "rel_err_vs_scan": err})
        print(f"{rows[-1]['shape']:<28} {name:<36} fwd {t_fwd * 1e3:8.2f} ms "
              f"({rows[-1]['forward_tflops']:6.1f} TFLOP/s)  fwd+bwd {t_bwd * 1e3:8.2f} ms  "
              f"err {err:.1e}  cudnn {rows[-1]['cudnn_in_program']}", flush=True)
    return rows


def ceilings(n_bytes: int, n: int, repeat: int) -> dict:
    """HBM: an elementwise pass over n_bytes (read + write counted); matrix rate: an n x n x n
    bf16 matmul on random data (`helix calibrate`'s two measurements)."""
    return {"copy_bytes": n_bytes, "hbm_bytes_per_s": measure_memory(n_bytes, 1, repeat),
            "matmul_n": n, "matmul_flops_per_s": measure_matmuls(
                "bfloat16", {"large": (n, n, n)}, 1, repeat)["large"]}


def markdown(report: dict) -> str:
    c = report["ceilings"]
    lines = ["# GPU kernels, measured\n", f"{markdown_header(report['generated_by'])} On "
             f"{report['device']}. Median of {report['repeat']} runs after "
             f"a warm-up; bf16; causal grouped-query attention; TFLOP/s count the visible half of "
             f"QKᵀ and PV (forward + backward as 3.5 x the forward's FLOPs).\n",
             f"- HBM, an elementwise pass over {c['copy_bytes'] / 1e9:.1f} GB: "
             f"{c['hbm_bytes_per_s'] / 1e12:.2f} TB/s (read + write)",
             f"- bf16 matmul {c['matmul_n']}³: {c['matmul_flops_per_s'] / 1e12:.0f} TFLOP/s\n",
             "| shape | way | cuDNN in program | forward ms | TFLOP/s | fwd+bwd ms | TFLOP/s | "
             "rel. error vs scan |", "|---|---|---|---|---|---|---|---|"]
    for r in report["attention"]:
        lines.append(f"| {r['shape']} | {r['way']} | {'yes' if r['cudnn_in_program'] else 'no'} "
                     f"| {r['forward_ms']:.2f} | {r['forward_tflops']:.0f} | "
                     f"{r['fwd_bwd_ms']:.2f} | {r['fwd_bwd_tflops']:.0f} | "
                     f"{r['rel_err_vs_scan']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args, out = parse_args("gpu_kernels", __doc__, argv, lambda p: (
        p.add_argument("--small", action="store_true", help="tiny shapes (a check of the code)"),
        p.add_argument("--repeat", type=int, default=20)))
    shapes = ([(1, 256, 4, 2, 64)] if args.small
              else [(1, 8192, 32, 8, 128), (4, 4096, 32, 8, 128), (8, 2048, 64, 8, 128)])
    rows = [r for s in shapes for r in attention_rows(s, 128 if args.small else 1024, args.repeat)]
    command = "python experiments/gpu_kernels.py " + " ".join(argv or sys.argv[1:])
    report = {"generated_by": generated_by(command),
              "device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
              "repeat": args.repeat, "attention": rows,
              "ceilings": ceilings(1 << (24 if args.small else 32), 512 if args.small else 8192,
                                   args.repeat)}
    (out / "gpu_kernels.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "gpu_kernels.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
