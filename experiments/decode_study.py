"""Decode study: time per output token and memory per device against context length and batch,
for every layout of paper-dense on 16 GPUs, from compiled decode steps.

Each point is one decode step (one new token for each of B sequences against a KV cache of C
positions) compiled on 16 fake devices and priced on a hardware profile (default dgx-h100:
measured links, HBM floor); nothing is allocated. Contexts 1k to 1M at batch 8, and batches 1 to
1024 at context 32k. Writes results/decode_study.{json,md,png}.

    python experiments/decode_study.py [--out results] [--hardware dgx-h100] [--quick]
"""

from __future__ import annotations

from helix_jax.devices import ensure_host_devices

ensure_host_devices(16)  # before jax starts

import json
import sys
from pathlib import Path

from helix_jax.analysis.costmodel.hardware import load_hardware
from helix_jax.analysis.costmodel.project import project
from helix_jax.config import resolve_model
from helix_jax.layouts import parse_layout
from helix_jax.report.fmt import num
from helix_jax.report.plots import LinePanel, line_chart
from helix_jax.report.provenance import generated_by, markdown_header

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import parse_args  # noqa: E402

LAYOUTS = ("tp-pp:tp=8,pp=2,microbatches=1", "helix", "helix:core=seq_a2a",
           "helix:core=qk_gather", "dp", "kvp", "kvp:kvp=4,tp=4")
CONTEXTS = (1024, 8192, 65536, 262144, 1048576)
BATCHES = (1, 8, 64, 256, 1024)
QUICK = {"contexts": (1024, 65536, 1048576), "batches": (1, 64, 1024)}


def point(spec: str, batch: int, context: int, hw) -> dict:
    cfg = resolve_model("paper-dense").replace(batch=batch, seq=context, kv_block=8192,
                                               q_block=8192)
    out = {"layout": spec, "batch": batch, "context": context}
    try:
        r = project(cfg, parse_layout(spec), hw, mode="decode").to_dict()
    except ValueError as e:
        return {**out, "error": str(e)}
    p = r["projected"]
    return {**out, "tpot_ms": p["tpot_ms"], "hbm_floor_ms": p["hbm_floor_seconds"] * 1e3,
            "comm_ms": p["comm_seconds"] * 1e3, "hbm_bound": p["hbm_bound"],
            "memory_gb": r["memory_bytes_per_device"] / 1e9, "fits": r["fits"]}


def conclusions(points: list[dict]) -> list[str]:
    lines = []
    for ctx in sorted({p["context"] for p in points if p["batch"] == 8}):
        group = [p for p in points if p["context"] == ctx and p["batch"] == 8 and "tpot_ms" in p]
        if not group:
            continue
        best = min(group, key=lambda p: p["tpot_ms"])
        kvp = next((p for p in group if p["layout"] == "kvp"), None)
        helix = next((p for p in group if p["layout"] == "helix"), None)
        text = (f"context {ctx:,} (batch 8): fastest `{best['layout']}` at "
                f"{num(best['tpot_ms'])} ms per token")
        if kvp and helix:
            text += (f"; kvp {num(kvp['tpot_ms'])} ms ({num(kvp['comm_ms'])} ms of communication) "
                     f"against helix score_psum {num(helix['tpot_ms'])} ms "
                     f"({num(helix['comm_ms'])} ms)")
        lines.append(text + ".")
    return lines


def main(argv: list[str] | None = None) -> int:
    def add(parser):
        parser.add_argument("--hardware", default="dgx-h100")
        parser.add_argument("--quick", action="store_true")

    args, out = parse_args("decode_study", __doc__, argv, add)
    hw = load_hardware(args.hardware)
    contexts = QUICK["contexts"] if args.quick else CONTEXTS
    batches = QUICK["batches"] if args.quick else BATCHES
    from tqdm.auto import tqdm

    jobs = [(s, 8, c) for s in LAYOUTS for c in contexts] + [
        (s, b, 32768) for s in LAYOUTS for b in batches]
    points = [point(s, b, c, hw) for s, b, c in tqdm(jobs, disable=not args.progress)]
    report = {"generated_by": generated_by("python experiments/decode_study.py"
                                           + (" --quick" if args.quick else "")),
              "hardware": hw.name, "points": points, "conclusions": conclusions(points)}
    (out / "decode_study.json").write_text(json.dumps(report, indent=1) + "\n")

    def series(key, fixed, xs, xkey):
        return {s: [next((p.get(key) for p in points if p["layout"] == s and p[xkey] == x
                          and p[fixed[0]] == fixed[1]), None) for x in xs] for s in LAYOUTS}

    line_chart(out / "decode_study.png", [
        LinePanel("time per output token, batch 8", list(contexts),
                  series("tpot_ms", ("batch", 8), contexts, "context"), "context (log)",
                  "ms per token (log)", logx=True, logy=True),
        LinePanel("memory per device, batch 8", list(contexts),
                  series("memory_gb", ("batch", 8), contexts, "context"), "context (log)",
                  "GB per device (log)", logx=True, logy=True),
        LinePanel("time per output token, context 32k", list(batches),
                  series("tpot_ms", ("context", 32768), batches, "batch"), "batch (log)",
                  "ms per token (log)", logx=True, logy=True)],
        f"Decode of paper-dense on 16 GPUs ({hw.name}), from compiled decode steps", ncols=3,
        width=5.2)
    lines = ["# Decode study: time per output token against context and batch", "",
             markdown_header(report["generated_by"]), "",
             f"paper-dense on 16 devices, priced on **{hw.name}**; each point is one compiled "
             "decode step, never faster than reading its weights and KV cache from HBM.", "",
             "## Where each layout wins (computed)", ""] + [f"- {c}" for c in report["conclusions"]]
    lines += ["", "| layout | batch | context | TPOT ms | HBM floor ms | comm ms | memory GB "
              "(fits) |", "|---|---|---|---|---|---|---|"]
    for p in points:
        if "tpot_ms" not in p:
            lines.append(f"| `{p['layout']}` | {p['batch']} | {p['context']:,} | {p['error']} "
                         "| | | |")
            continue
        lines.append(f"| `{p['layout']}` | {p['batch']} | {p['context']:,} | "
                     f"{num(p['tpot_ms'])} | {num(p['hbm_floor_ms'])} | {num(p['comm_ms'])} | "
                     f"{p['memory_gb']:.1f} ({num(p['fits'])}) |")
    lines += ["", "![decode_study](decode_study.png)"]
    (out / "decode_study.md").write_text("\n".join(lines) + "\n")
    for c in report["conclusions"]:
        print(f"- {c}")
    print(f"wrote decode_study.json, decode_study.md, decode_study.png into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
