"""How close are the projections to measured training steps? Published step times against
`helix project --mode train`, and against the naive constant-MFU model.

Rows (measured step time in seconds, and where it was published):
  Korthikanti et al. 2022 (arXiv 2205.05198), Table 5: DGX A100 80 GB, seq 2048, vocab 51,200,
      fp16, TP 8, DP 1, "full recompute" and "sequence parallel + selective recompute":
      22B (48 layers, h 6144, 64 heads, PP 1, batch 4 as one micro-batch of 4) and
      175B (96 layers, h 12288, 96 heads, PP 8, interleaved V = 3, batch 64, micro-batches of 1).
  Megatron-LM README weak-scaling table (Megatron-Core r0.8.0): DGX H100, bf16, seq 4096, vocab
      131,072, d_ff = 4h, DP 48, micro-batch 1 (assumed: not stated), communication overlapped,
      distributed optimizer; step times derived from its TFLOP/s/GPU with Megatron's FLOP formula.
      "Communication overlapped" is modelled as the layout option tp_overlap=true (Transformer
      Engine overlaps the tensor-parallel collectives with the GEMMs) on top of the data-parallel
      overlap every projection assumes; Korthikanti et al.'s 2022 runs had no such overlap.

For each row: the projection (what was compiled, what was extended by formula), the error, and the
error of the constant-MFU model, which prices every row at the mean MFU of the *other* rows.
Writes results/validation.{json,md,png}.

    python experiments/validate_measured.py [--out results]
"""

from __future__ import annotations

from helix_jax.devices import ensure_host_devices

ensure_host_devices(64)  # before jax starts: whole programs of up to 64 devices

import json
import statistics
import sys
import time
from pathlib import Path

from helix_jax.analysis.costmodel.hardware import load_hardware
from helix_jax.analysis.costmodel.project import project
from helix_jax.analysis.costmodel.terms import model_flops_per_token
from helix_jax.config import load_model_file
from helix_jax.layouts import parse_layout
from helix_jax.report.fmt import num, pct
from helix_jax.report.provenance import generated_by, markdown_header

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import parse_args  # noqa: E402  (re-exported for experiments/sensitivity.py)

MODELS = Path(__file__).resolve().parent / "models"
KORTHIKANTI = "Korthikanti et al. 2022, Table 5 (arXiv 2205.05198)"
MEGATRON = "Megatron-LM README, weak scaling (Megatron-Core r0.8.0)"

ROWS = [
    dict(label="22B full recompute", source=KORTHIKANTI, model="korthikanti-22b",
         layout="tp-pp:tp=8,pp=1,dp=1,microbatches=1", hardware="dgx-a100", batch=4, seq=2048,
         dtype="float16", remat="full", measured=1.42),
    dict(label="22B SP+selective", source=KORTHIKANTI, model="korthikanti-22b",
         layout="tp-pp:tp=8,pp=1,dp=1,microbatches=1,sp=true", hardware="dgx-a100", batch=4,
         seq=2048, dtype="float16", remat="selective", measured=1.10),
    dict(label="175B full recompute", source=KORTHIKANTI, model="korthikanti-175b",
         layout="tp-pp:tp=8,pp=8,dp=1,microbatches=64,schedule=1f1b,virtual=3",
         hardware="dgx-a100", batch=64, seq=2048, dtype="float16", remat="full", measured=18.13),
    dict(label="175B SP+selective", source=KORTHIKANTI, model="korthikanti-175b",
         layout="tp-pp:tp=8,pp=8,dp=1,microbatches=64,schedule=1f1b,virtual=3,sp=true",
         hardware="dgx-a100", batch=64, seq=2048, dtype="float16", remat="selective",
         measured=13.75),
    dict(label="1.7B", source=MEGATRON, model="megatron-1.7b",
         layout="tp-pp:tp=1,pp=1,dp=48,microbatches=4,tp_overlap=true", hardware="dgx-h100",
         batch=192, seq=4096, dtype="bfloat16", remat="none", measured=0.45),
    dict(label="16B", source=MEGATRON, model="megatron-16b",
         layout="tp-pp:tp=4,pp=1,dp=48,microbatches=4,tp_overlap=true", hardware="dgx-h100",
         batch=192, seq=4096, dtype="bfloat16", remat="none", measured=0.85),
    dict(label="70B", source=MEGATRON, model="megatron-70b",
         layout="tp-pp:tp=8,pp=2,dp=48,microbatches=8,schedule=1f1b,tp_overlap=true", hardware="dgx-h100",
         batch=384, seq=4096, dtype="bfloat16", remat="none", measured=2.18),
    dict(label="177B", source=MEGATRON, model="megatron-177b",
         layout="tp-pp:tp=8,pp=6,dp=48,microbatches=24,schedule=1f1b,tp_overlap=true", hardware="dgx-h100",
         batch=1152, seq=4096, dtype="bfloat16", remat="none", measured=5.26),
]


def command(row: dict) -> str:
    return (f"helix project --model-file experiments/models/{row['model']}.toml --layout "
            f"\"{row['layout']}\" --hardware {row['hardware']} --mode train --batch {row['batch']} "
            f"--seq {row['seq']} --dtype {row['dtype']} --remat {row['remat']}")


def run_row(row: dict) -> dict:
    cfg = load_model_file(MODELS / f"{row['model']}.toml").replace(
        batch=row["batch"], seq=row["seq"], dtype=row["dtype"])
    layout, hw = parse_layout(row["layout"]), load_hardware(row["hardware"])
    start = time.perf_counter()
    p = project(cfg, layout, hw, mode="train", remat=row["remat"]).to_dict()
    seconds = time.perf_counter() - start
    flops = model_flops_per_token(cfg, "train") * cfg.batch * cfg.seq
    measured_mfu = flops / (row["measured"] * layout.devices * hw.peak_flops_per_s)
    return {**row, "command": command(row), "devices": layout.devices,
            "projected_step_s": p["projected"]["step_seconds"],
            "error": p["projected"]["step_seconds"] / row["measured"] - 1,
            "projected_mfu": p["projected"]["mfu"], "measured_mfu": measured_mfu,
            "model_flops_per_step": flops, "peak_flops_per_s": hw.peak_flops_per_s,
            "fits": p["fits"], "memory_gb": p["memory_bytes_per_device"] / 1e9,
            "compiled": p["compiled"], "extended_by_formula": p["extended_by_formula"],
            "breakdown": p["projected"], "analysis_seconds": seconds}


def constant_mfu(rows: list[dict]) -> None:
    """Each row at the mean measured MFU of the other rows (leave-one-out)."""
    for i, r in enumerate(rows):
        others = [q["measured_mfu"] for j, q in enumerate(rows) if j != i]
        mfu = statistics.mean(others)
        r["constant_mfu"] = mfu
        r["constant_mfu_step_s"] = r["model_flops_per_step"] / (
            mfu * r["devices"] * r["peak_flops_per_s"])
        r["constant_mfu_error"] = r["constant_mfu_step_s"] / r["measured"] - 1


def summary(rows: list[dict]) -> dict:
    errs = [abs(r["error"]) for r in rows]
    base = [abs(r["constant_mfu_error"]) for r in rows]
    return {"median_abs_error": statistics.median(errs), "worst_abs_error": max(errs),
            "mean_abs_error": statistics.mean(errs),
            "constant_mfu_median_abs_error": statistics.median(base),
            "constant_mfu_worst_abs_error": max(base), "rows": len(rows)}


def markdown(report: dict) -> str:
    s = report["summary"]
    lines = ["# How accurate are the projections? Measured training steps", "",
             markdown_header(report["generated_by"]), "",
             (f"Over {s['rows']} published measurements the projected step time is off by "
              f"{pct(s['median_abs_error'])} at the median and {pct(s['worst_abs_error'])} at "
              f"worst; the constant-MFU model (each row at the mean MFU of the others) is off by "
              f"{pct(s['constant_mfu_median_abs_error'])} at the median and "
              f"{pct(s['constant_mfu_worst_abs_error'])} at worst."), "",
             "| row | source | hardware | layout | remat | measured s | projected s | error | "
             "constant-MFU s | its error | measured MFU | projected memory GB (fits) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(
            f"| {r['label']} | {r['source']} | {r['hardware']} | `{r['layout']}` | {r['remat']} | "
            f"{r['measured']:.2f} | {r['projected_step_s']:.2f} | {r['error']:+.1%} | "
            f"{r['constant_mfu_step_s']:.2f} | {r['constant_mfu_error']:+.1%} | "
            f"{pct(r['measured_mfu'])} | {r['memory_gb']:.0f} ({num(r['fits'])}) |")
    lines += ["", "Each projection compiles the program named below and extends the rest by "
              "formula (docs/cost-model.md); every hardware constant is in the profile with its "
              "source (`helix_jax/analysis/costmodel/hardware.py`). The Megatron-LM rows assume "
              "micro-batch 1, which its README does not state.", ""]
    for r in report["rows"]:
        lines.append(f"- **{r['label']}** (`{r['command']}`): compiled {r['compiled']}"
                     + ("; extended by formula: " + "; ".join(r["extended_by_formula"])
                        if r["extended_by_formula"] else "") + ".")
    lines += ["", "![validation](validation.png)"]
    return "\n".join(lines) + "\n"


def chart(report: dict, path: Path) -> None:
    from helix_jax.report.plots import BarPanel, bar_chart

    rows = report["rows"]
    cats = [r["label"].replace(" ", "\n", 1) for r in rows]
    bar_chart(path, [
        BarPanel("step time: measured, projected, constant MFU", cats,
                 {"measured": [r["measured"] for r in rows],
                  "projected (helix project --mode train)": [r["projected_step_s"] for r in rows],
                  "constant MFU (mean of the others)": [r["constant_mfu_step_s"] for r in rows]},
                 "seconds per training step (log)", log=True),
        BarPanel("|error| against the measurement", cats,
                 {"projected": [100 * abs(r["error"]) for r in rows],
                  "constant MFU": [100 * abs(r["constant_mfu_error"]) for r in rows]},
                 "|error|, % of the measured step (signs in validation.md)")],
        "Projected training steps against published measurements", ncols=2)


def main(argv: list[str] | None = None) -> int:
    args, out = parse_args("validate_measured", __doc__, argv)
    from tqdm.auto import tqdm

    rows = []
    for row in tqdm(ROWS, desc="validate", unit="row", disable=not args.progress):
        rows.append(run_row(row))
    constant_mfu(rows)
    report = {"generated_by": generated_by("python experiments/validate_measured.py"),
              "summary": summary(rows), "rows": rows}
    (out / "validation.json").write_text(json.dumps(report, indent=1) + "\n")
    chart(report, out / "validation.png")
    (out / "validation.md").write_text(markdown(report))
    s = report["summary"]
    for r in rows:
        print(f"  {r['label']:<22} measured {r['measured']:6.2f} s  projected "
              f"{r['projected_step_s']:6.2f} s  ({r['error']:+.1%}; constant MFU "
              f"{r['constant_mfu_error']:+.1%})")
    print(f"median |error| {pct(s['median_abs_error'])}, worst {pct(s['worst_abs_error'])}; "
          f"constant MFU median {pct(s['constant_mfu_median_abs_error'])}")
    print(f"wrote {out / 'validation.json'}, validation.md, validation.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
