"""Does the composed projection of a pipeline (one stage compiled, the schedule by formula) agree
with the program the runtime runs (the whole training step compiled, its 1F1B tick loop read)?
On mid-size cases (8 layers, d_model 1024, tp = 2, pp = 2 or 4, M = 8; the cases of
tests/test_pipelined_projection.py), with and without sequence parallelism: the compiled step in
Megatron's order without the runtime's plumbing, the composed step, the plumbing set apart and
the step as helix's runtime runs it (lockstep, plumbing included). Writes
results/pipelined_vs_composed.{json,md,png}.

    python experiments/pipelined_vs_composed.py [--out results] [--no-progress]
"""

from __future__ import annotations

from helix_jax.devices import ensure_host_devices

ensure_host_devices(8)  # before jax starts: tp 2 x pp 4

import json
import sys
from pathlib import Path

from helix_jax.report.provenance import generated_by, markdown_header

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import parse_args  # noqa: E402

SHAPES = dict(n_layers=8, d_model=1024, n_heads=8, head_dim=128, d_ff=4096, batch=16, seq=512)
CASES = (("GPipe", 2, "schedule=gpipe"), ("1F1B", 2, "schedule=1f1b"),
         ("interleaved x2", 2, "schedule=1f1b,virtual=2"), ("1F1B, pp 4", 4, "schedule=1f1b"))
HARDWARE = "dgx-h100"


def rows(progress: bool) -> list[dict]:
    """One row per case and sp setting: both projections' steps and the compiled one's parts."""
    from tqdm import tqdm

    from helix_jax.analysis.costmodel.hardware import load_hardware
    from helix_jax.analysis.costmodel.project import project
    from helix_jax.config import resolve_model
    from helix_jax.layouts import parse_layout

    cfg, hw = resolve_model("tiny-dense").replace(**SHAPES), load_hardware(HARDWARE)
    todo = [(name, p, options, sp) for sp in (True, False) for name, p, options in CASES]
    out = []
    for name, p, options, sp in tqdm(todo, disable=not progress, desc="pipelines"):
        spec = f"tp-pp:tp=2,pp={p},microbatches=8,{options},sp={str(sp).lower()}"
        whole, composed = (project(cfg, parse_layout(spec), hw, mode="train",
                                   composed=c).to_dict() for c in (False, True))
        pipe = whole["pipeline"]
        out.append({"case": name, "sp": sp, "layout": spec,
                    "compiled_step_s": whole["projected"]["step_seconds"],
                    "composed_step_s": composed["projected"]["step_seconds"],
                    "plumbing_s": pipe["runtime_plumbing_seconds"],
                    "as_run_s": pipe.get("lockstep_seconds", pipe.get("as_run_seconds")),
                    "flops_compiled": whole["flops_per_device"],
                    "flops_composed": composed["flops_per_device"]})
        out[-1]["error"] = out[-1]["compiled_step_s"] / out[-1]["composed_step_s"] - 1
    return out


def markdown(report: dict) -> str:
    lines = ["# Pipelines compiled whole against the composed projection", "",
             markdown_header(report["generated_by"]), "",
             f"Model: tiny-dense's layout with {', '.join(f'{k} {v}' for k, v in SHAPES.items())}"
             f"; priced on {HARDWARE}. The compiled step is the whole training step the runtime "
             f"runs, read in Megatron's order without the runtime's own plumbing (its stash, its "
             f"gradient sums over microbatches, the interleaved order's chunk moves; GPipe's "
             f"per-step residual stacks), which is set apart; 'as run' is the step as helix's "
             f"runtime takes it, plumbing included (1F1B: its ticks in lockstep; GPipe: its "
             f"serial time). docs/cost-model.md, 'Pipelines compiled whole', says how each is "
             f"read.", "",
             "![steps](pipelined_vs_composed.png)", "",
             "| case | sp | compiled step ms | composed step ms | difference | plumbing ms | "
             "as run ms | FLOPs equal |", "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['case']} | {'on' if r['sp'] else 'off'} | "
                     f"{r['compiled_step_s'] * 1e3:.2f} | {r['composed_step_s'] * 1e3:.2f} | "
                     f"{r['error']:+.1%} | {r['plumbing_s'] * 1e3:.2f} | "
                     f"{r['as_run_s'] * 1e3:.2f} | "
                     f"{'yes' if abs(r['flops_compiled'] / r['flops_composed'] - 1) < 1e-9 else 'no'}"
                     f" |")
    lines += ["", "Without sequence parallelism helix's runtime sends the whole [b, S, D] "
              "activation between stages from every tensor rank, where the composed formula "
              "prices Megatron-LM's scatter-gather, each rank sending its 1/tp slice. GPipe "
              "computes its bubble, and both projections count it: M + p - 1 microbatches' "
              "FLOPs."]
    return "\n".join(lines) + "\n"


def chart(report: dict, path: Path) -> None:
    """Per case, the compiled step, the composed one and the step as the runtime runs it, one
    panel with sequence parallelism and one without."""
    from helix_jax.report.plots import BarPanel, bar_chart

    panels = []
    for sp in (True, False):
        rows = [r for r in report["rows"] if r["sp"] is sp]
        panels.append(BarPanel(
            title=f"sequence parallelism {'on' if sp else 'off'}",
            categories=[r["case"] for r in rows], ylabel="step, ms",
            series={"compiled whole (Megatron's order, no plumbing)":
                        [r["compiled_step_s"] * 1e3 for r in rows],
                    "composed (one stage + formula)": [r["composed_step_s"] * 1e3 for r in rows],
                    "as helix's runtime runs it": [r["as_run_s"] * 1e3 for r in rows]},
            fmt=lambda v: "" if v is None else f"{v:.1f}"))
    bar_chart(path, panels, "Pipelines compiled whole against the composed projection "
              f"({report['hardware']})", ncols=2)


def main(argv: list[str] | None = None) -> int:
    args, out = parse_args("pipelined_vs_composed", __doc__, argv)
    report = {"generated_by": generated_by("python experiments/pipelined_vs_composed.py"),
              "hardware": HARDWARE, "shapes": SHAPES, "rows": rows(args.progress)}
    (out / "pipelined_vs_composed.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "pipelined_vs_composed.md").write_text(markdown(report))
    chart(report, out / "pipelined_vs_composed.png")
    for r in report["rows"]:
        print(f"  {r['case']:<15} sp={'on ' if r['sp'] else 'off'} compiled "
              f"{r['compiled_step_s'] * 1e3:6.2f} ms  composed {r['composed_step_s'] * 1e3:6.2f} "
              f"ms ({r['error']:+.1%})  plumbing {r['plumbing_s'] * 1e3:5.2f} ms  as run "
              f"{r['as_run_s'] * 1e3:6.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
