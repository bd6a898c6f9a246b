"""Long-context study: context parallelism (ring and all-gather) against tensor parallelism alone
and the paper's attention split (helix), for a Llama-3-8B- and a Llama-3-70B-shaped model at
8K to 1M tokens, training step and prefill, on dgx-h100.

Training: each row is one composed training step (helix_jax.analysis.costmodel.compose): one
pipeline stage's forward + backward compiled on its tensor (and context) ranks, priced, and the
data replicas, context groups past 64 fake devices and memory extended by formula; memory per
device is the formula's (16-bit weights, fp32 gradients, distributed-optimizer states, the
activations of the tokens a device holds), since XLA:CPU's reading errs high. At each length
every layout gets the same GPUs, 8 x K with K = S / 4096 clamped to [2, 64]:
  tp        tp-pp:tp=8,sp=true,dp=K   K sequences, each on one 8-GPU tensor-parallel group
  cp ring   tp-pp:tp=8,sp=true,cp=K   one sequence over all GPUs, K/V passed around the ring
  cp gather the same, K/V all-gathered (attention=allgather)
Prefill: the forward pass of one prompt (no KV cache written), compiled whole on at most 64 fake
devices: tp=8 alone and helix (m x n = 8) on 8 GPUs, cp on 8 x K GPUs; time to first token and
throughput per GPU. Helix's training step cannot be composed (it has no pipeline stages), so it is
compared at prefill, where its attention split is the paper's claim.

    python experiments/long_context.py [--out results] [--hardware dgx-h100] [--quick]
"""

from __future__ import annotations

from helix_jax.analysis.planner.cache import use_fast_codegen
from helix_jax.devices import ensure_host_devices

ensure_host_devices(64)  # before jax starts, with XLA's cheapest code generation (read-only use)
use_fast_codegen()

import json
import sys
from pathlib import Path

from helix_jax.analysis.costmodel.compose import project_composed
from helix_jax.analysis.costmodel.hardware import load_hardware
from helix_jax.analysis.costmodel.project import check_projection, project
from helix_jax.config import resolve_model
from helix_jax.layouts import parse_layout
from helix_jax.report.fmt import num
from helix_jax.report.plots import LinePanel, line_chart
from helix_jax.report.provenance import generated_by, markdown_header

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import parse_args  # noqa: E402

MODELS = ("llama3-8b", "llama3-70b")
SEQS = (8192, 32768, 131072, 524288, 1048576)
PREFILL_SEQS = (8192, 32768, 131072)
QUICK = {"seqs": (8192, 131072), "prefill": (8192,)}
TRAIN = {"tp": "tp-pp:tp=8,pp=1,sp=true,dp={K},microbatches=1",
         "cp ring": "tp-pp:tp=8,pp=1,sp=true,cp={K},microbatches=1",
         "cp gather": "tp-pp:tp=8,pp=1,sp=true,cp={K},microbatches=1,attention=allgather"}
PREFILL = {"tp": "tp-pp:tp=8,pp=1,sp=true,microbatches=1",
           "helix 2x4": "helix:m=2,n=4", "helix 4x2": "helix:m=4,n=2",
           "cp ring": "tp-pp:tp=8,pp=1,sp=true,cp={K},microbatches=1",
           "cp gather": "tp-pp:tp=8,pp=1,sp=true,cp={K},microbatches=1,attention=allgather"}
MAX_PREFILL_K = 8  # 8 x 8 = 64 GPUs: a prefill compiles whole


def groups(seq: int) -> int:
    """K: the data replicas (tp) or context ranks (cp) at this length, 8 x K GPUs in all."""
    return min(64, max(2, seq // 4096))


def _row(model: str, seq: int, name: str, kind: str, spec: str, batch: int, hw) -> dict:
    # blocks of 2K positions (FlashAttention-sized tiles; fewer blocks, the same FLOPs)
    cfg = resolve_model(model).replace(seq=seq, batch=batch, q_block=2048, kv_block=2048)
    layout = parse_layout(spec)
    out = {"model": model, "seq": seq, "layout": name, "spec": spec, "kind": kind,
           "gpus": layout.devices, "sequences": batch}
    try:
        if kind == "train":
            check_projection(cfg, layout, "train", "shard_map")
            r = project_composed(cfg, layout, hw).to_dict()
        else:
            r = project(cfg, layout, hw, batch_chunks=1, mode="forward").to_dict()
    except ValueError as e:
        return {**out, "error": str(e).splitlines()[0]}
    p = r["projected"]
    return {**out, "step_s": p["step_seconds"],
            "tokens_per_s_per_gpu": p["tokens_per_s"] / layout.devices, "mfu": p["mfu"],
            "exposed_comm_s": p["exposed_comm_seconds"],
            "attention_s": p["compute_breakdown"].get("attention_seconds"),
            "ring_hidden_s": p.get("ring_hidden_seconds"),
            "memory_gb": r["memory_bytes_per_device"] / 1e9, "fits": r["fits"],
            "compiled": r["compiled"], "extended_by_formula": r.get("extended_by_formula", [])}


def jobs(seqs, prefill_seqs) -> list[tuple]:
    out = []
    for model in MODELS:
        for seq in seqs:
            K = groups(seq)
            for name, spec in TRAIN.items():
                out.append((model, seq, name, "train", spec.format(K=K), K if name == "tp" else 1))
        for seq in prefill_seqs:
            K = min(groups(seq), MAX_PREFILL_K)
            for name, spec in PREFILL.items():
                out.append((model, seq, name, "prefill", spec.format(K=K), 1))
    return out


def conclusions(rows: list[dict]) -> list[str]:
    """Per model, kind and length: the fastest layout that fits, and why (from the rows)."""
    lines = []
    for model in MODELS:
        for kind in ("train", "prefill"):
            for seq in sorted({r["seq"] for r in rows if r["kind"] == kind}):
                group = [r for r in rows if (r["model"], r["kind"], r["seq"]) == (model, kind, seq)
                         and "step_s" in r]
                if not group:
                    continue
                key = "tokens_per_s_per_gpu"
                fits = [r for r in group if r["fits"]]
                best = max(fits or group, key=lambda r: r[key])
                text = (f"{model}, {kind}, {seq // 1024}K tokens: "
                        + (f"fastest that fits `{best['layout']}`" if fits else
                           f"nothing fits; fastest `{best['layout']}`")
                        + f" at {num(best[key])} tokens/s per GPU ({best['gpus']} GPUs, "
                        f"{best['memory_gb']:.0f} GB per device)")
                tp = next((r for r in group if r["layout"] == "tp"), None)
                if tp and best is not tp:
                    text += (f"; tp alone {num(tp[key])} tokens/s per GPU at "
                             f"{tp['memory_gb']:.0f} GB ({'fits' if tp['fits'] else 'does not fit'})")
                helix = [r for r in group if r["layout"].startswith("helix")]
                if helix and tp:
                    h = max(helix, key=lambda r: r[key])
                    text += (f"; best helix (`{h['layout']}`) {h[key] / tp[key]:.2f}x tp's "
                             f"throughput")
                ring = next((r for r in group if r["layout"] == "cp ring"), None)
                gather = next((r for r in group if r["layout"] == "cp gather"), None)
                if ring and gather:
                    text += (f"; ring {ring['step_s'] / gather['step_s']:.2f}x all-gather's "
                             f"step")
                lines.append(text + ".")
    return lines


def _table(rows: list[dict], kind: str) -> list[str]:
    head = ("| model | tokens | layout | GPUs | sequences | step s | tokens/s per GPU | MFU | "
            "exposed comm s | memory GB (fits) |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] != kind:
            continue
        lead = f"| {r['model']} | {r['seq'] // 1024}K | `{r['spec']}` | {r['gpus']} | {r['sequences']} "
        if "error" in r:
            lines.append(lead + f"| {r['error']} | | | | |")
            continue
        lines.append(lead + f"| {num(r['step_s'])} | {num(r['tokens_per_s_per_gpu'])} | "
                     f"{r['mfu']:.1%} | {num(r['exposed_comm_s'])} | "
                     f"{r['memory_gb']:.1f} ({num(r['fits'])}) |")
    return lines


def _series(rows, kind, model, key, seqs, names):
    return {n: [next((r.get(key) for r in rows if (r["kind"], r["model"], r["seq"], r["layout"])
                      == (kind, model, s, n)), None) for s in seqs] for n in names}


def write(out: Path, rows: list[dict], report: dict, seqs, prefill_seqs, hw) -> None:
    (out / "long_context.json").write_text(json.dumps(report, indent=1) + "\n")
    panels = []
    for model in MODELS:
        panels += [
            LinePanel(f"{model}: training, tokens/s per GPU", list(seqs),
                      _series(rows, "train", model, "tokens_per_s_per_gpu", seqs, TRAIN),
                      "tokens per sequence (log)", "tokens/s per GPU (log)", logx=True, logy=True),
            LinePanel(f"{model}: training, memory per device", list(seqs),
                      _series(rows, "train", model, "memory_gb", seqs, TRAIN),
                      "tokens per sequence (log)", "GB per device (log)", logx=True, logy=True,
                      note=f"{hw.hbm_capacity_bytes / 1e9:.0f} GB of HBM"),
            LinePanel(f"{model}: prefill, tokens/s per GPU", list(prefill_seqs),
                      _series(rows, "prefill", model, "tokens_per_s_per_gpu", prefill_seqs,
                              PREFILL),
                      "prompt tokens (log)", "tokens/s per GPU (log)", logx=True, logy=True)]
    line_chart(out / "long_context.png", panels,
               f"Long context on {hw.name}: context parallelism, tensor parallelism, helix",
               ncols=3, width=5.2)
    lines = ["# Long context: context parallelism against tensor parallelism and helix", "",
             markdown_header(report["generated_by"]), "",
             f"Priced on **{hw.name}**. Training rows are composed training steps (one stage "
             "compiled on its tensor and context ranks, the rest extended by formula; memory by "
             "formula); prefill rows are the forward pass of one prompt compiled whole. At each "
             "length the training layouts get the same GPUs (8 x K, K = tokens / 4096 within "
             "[2, 64]): `tp` runs K sequences on K tensor-parallel groups, `cp` one sequence over "
             "all of them.", "", "## Where each wins (computed from the rows)", ""]
    lines += [f"- {c}" for c in report["conclusions"]]
    lines += ["", "## Training step", ""] + _table(rows, "train")
    lines += ["", "## Prefill (forward pass of one prompt)", ""] + _table(rows, "prefill")
    lines += ["", "What each row compiled and extended is in `long_context.json` "
              "(`compiled`, `extended_by_formula`).", "", "![long_context](long_context.png)"]
    (out / "long_context.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    def add(parser):
        parser.add_argument("--hardware", default="dgx-h100")
        parser.add_argument("--quick", action="store_true", help="two lengths, one prefill length")

    args, out = parse_args("long_context", __doc__, argv, add)
    hw = load_hardware(args.hardware)
    seqs = QUICK["seqs"] if args.quick else SEQS
    prefill_seqs = QUICK["prefill"] if args.quick else PREFILL_SEQS
    from tqdm.auto import tqdm

    todo = jobs(seqs, prefill_seqs)
    rows = [_row(*j, hw) for j in tqdm(todo, disable=not args.progress, desc="long_context")]
    report = {"generated_by": generated_by("python experiments/long_context.py"
                                           + (" --quick" if args.quick else "")),
              "hardware": hw.name, "rows": rows, "conclusions": conclusions(rows)}
    write(out, rows, report, seqs, prefill_seqs, hw)
    for c in report["conclusions"]:
        print(f"- {c}")
    print(f"wrote long_context.json, long_context.md, long_context.png into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
