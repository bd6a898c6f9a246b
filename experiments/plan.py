"""Which layout should I use? `helix plan` for the paper's two models and for the Megatron-LM
configurations of the validation set. Writes results/plan.{json,md,png}.

  paper     paper-dense and paper-moe on 16 GPUs, on h100-paper and dgx-h100, for a forward pass,
            a training step and a decode step (batch 1024, context 10,000; when no layout can hold
            that KV cache, again at the largest power-of-two batch that could). Each h100-paper
            forward and training search runs cold (an empty cache) and then again warm (the same
            inputs), and both times are recorded with the machine's load; the dgx-h100 searches
            re-price the programs the h100-paper ones compiled. The warm time is that of the
            `helix plan` command in a new process (jax's start included).
  megatron  each Megatron-LM row of experiments/validate_measured.py (same model, GPU count,
            batch, sequence, dtype; dgx-h100; training steps), searched over Megatron's own space
            (tp-pp: tensor parallelism inside a node, pipeline and data parallelism, schedule,
            virtual stages, sequence parallelism, TP overlap, remat) with micro-batches of one
            sequence, as the published runs are assumed to use, and the published layout
            projected beside the best.

    python experiments/plan.py [--out results] [--only paper|megatron] [--cache-dir D]
    python experiments/plan.py --render-only   # plan.md and the README block from plan.json

Afterwards the README's planner block is rewritten from results/plan.json (`--no-readme` to skip).
"""

from __future__ import annotations

from helix_jax.analysis.planner.cache import use_fast_codegen

use_fast_codegen()  # before jax starts: see plan_cache.FAST_CODEGEN_FLAGS
from helix_jax.devices import ensure_host_devices

ensure_host_devices(96)  # whole programs of up to 64 devices; composed stages of up to 96 heads

import argparse
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from helix_jax.analysis.costmodel.hardware import load_hardware
from helix_jax.analysis.planner.bounds import whole_model_floor
from helix_jax.analysis.planner.cache import ProgramCache
from helix_jax.analysis.planner.explain import compare, option_changes
from helix_jax.analysis.planner.search import paper_anchors, plan
from helix_jax.config import load_model_file, resolve_model
from helix_jax.layouts import parse_layout
from helix_jax.report.fmt import num, pct
from helix_jax.report.planning import (
    best_candidate,
    draw_pareto,
    plan_report,
    readme_block,
    replace_readme_block,
    run_mode,
)
from helix_jax.report.provenance import generated_by, markdown_header
from helix_jax.report.wording import mark_why, priced_only_footnote, priced_only_mark, rendered_note

HERE = Path(__file__).resolve().parent
PAPER = [(model, hw, mode) for hw in ("h100-paper", "dgx-h100")
         for model in ("paper-dense", "paper-moe") for mode in ("forward", "train", "decode")]
TIMED = {("h100-paper", "forward"), ("h100-paper", "train")}  # cold, then warm


def megatron_rows() -> list[dict]:
    """The Megatron-LM rows of the validation script (its ROWS, as the script defines them)."""
    spec = importlib.util.spec_from_file_location("validate_measured",
                                                  HERE / "validate_measured.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [r for r in module.ROWS if r["source"] == module.MEGATRON]


def conditions() -> dict:
    return {"load_average_1min": os.getloadavg()[0], "cpus": os.cpu_count()}


def run(cfg, hw_name: str, devices: int, mode: str, cache_dir: Path, command: str, **kw) -> dict:
    """One search: its report (plan_report), the wall time and the machine's load."""
    before = conditions()
    p = plan(cfg, load_hardware(hw_name), devices, mode, cache=ProgramCache(cache_dir),
             progress=True, all_remat=False, **kw)  # as `helix plan` searches by default
    out = plan_report(p, command)
    out["conditions"] = {"before": before, "after": conditions()}
    out["_plan"] = p  # dropped before writing
    return out


def warm_run(command: str, cache_dir: Path) -> dict:
    """The same search again as the command a user types, in a new process, on the cache the
    cold search filled: its wall time (process start, jax import and the search)."""
    import shlex
    import subprocess

    out = cache_dir / "warm.json"
    before = conditions()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "helix_jax.cli", *shlex.split(command)[1:],
                    "--cache-dir", str(cache_dir), "--json", str(out), "--no-progress"],
                   check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    warm = json.loads(out.read_text())
    return {"seconds": seconds, "search_seconds": warm["seconds"], "cache": warm["cache"],
            "best": warm["best"], "conditions": {"before": before, "after": conditions()}}


def paper_section(cache_dir: Path) -> list[dict]:
    runs = []
    for model, hw, mode in PAPER:
        cfg = resolve_model(model)
        command = (f"helix plan --model {model} --hardware {hw} --devices 16 --mode {mode}")
        r = run(cfg, hw, 16, mode, cache_dir, command, anchors=paper_anchors(cfg), max_micro=4,
                jobs=2)
        if (hw, mode) in TIMED:
            r["warm"] = warm_run(command, cache_dir)
        runs.append(r)
        print(f"{model} {mode} on {hw}: {r['best']} in {r['seconds']:.0f} s"
              + (f" (warm {r['warm']['seconds']:.1f} s)" if "warm" in r else ""), flush=True)
        smaller = fitting_batch(cfg, hw, mode) if r["best"] is None else None
        if smaller:  # the answer at the largest power-of-two batch the model's floor allows
            r = run(cfg.replace(batch=smaller), hw, 16, mode, cache_dir,
                    f"{command} --batch {smaller}", anchors=paper_anchors(cfg), max_micro=4,
                    jobs=2)
            r["default_batch"] = cfg.batch
            runs.append(r)
            print(f"{model} {mode} on {hw} at batch {smaller}: {r['best']} in "
                  f"{r['seconds']:.0f} s", flush=True)
    return runs


def fitting_batch(cfg, hw_name: str, mode: str) -> int:
    """The largest power of two at or below the batch whose KV cache and weights fit the 16
    devices at all (`plan_bounds.Floor.max_batch`); 0 when the floor is not per sequence."""
    floor = whole_model_floor(cfg, load_hardware(hw_name), 16, mode)
    if not floor.cache_bytes_per_sequence or floor.max_batch < 1:
        return 0
    return 2 ** int(math.log2(floor.max_batch))


def megatron_section(cache_dir: Path) -> list[dict]:
    runs = []
    for row in megatron_rows():
        cfg = load_model_file(HERE / "models" / f"{row['model']}.toml").replace(
            batch=row["batch"], seq=row["seq"], dtype=row["dtype"])
        devices = parse_layout(row["layout"]).devices
        published = f"{row['layout']}@{row['remat']}"
        command = (f"helix plan --model-file experiments/models/{row['model']}.toml --hardware "
                   f"{row['hardware']} --devices {devices} --mode train --batch {row['batch']} "
                   f"--seq {row['seq']} --dtype {row['dtype']} --kinds tp-pp --max-micro 1 "
                   f"--max-tp 8")
        r = run(cfg, row["hardware"], devices, "train", cache_dir, command, kinds=("tp-pp",),
                anchors=((published, "published (Megatron-LM)"),), max_micro=1, max_tp=8,
                jobs=2)
        p = r["_plan"]
        anchor = p.anchors[0] if p.anchors else None
        r["megatron"] = {"label": row["label"], "measured_s": row["measured"],
                         "published": anchor, "devices": devices}
        if anchor:
            pub = p.rows[anchor]
            r["megatron"].update({
                "published_projected_s": pub.step if pub.projection else None,
                "published_fits": pub.projection["fits"] if pub.projection else None,
                "published_status": pub.status,
                "changes": option_changes(pub.candidate, p.best.candidate) if p.best else [],
                "best_vs_published": compare(p, anchor) if p.best else None})
        runs.append(r)
        print(f"Megatron {row['label']} on {devices} GPUs: {r['best']} in {r['seconds']:.0f} s",
              flush=True)
    return runs


# ----------------------------------------------------------------------------- writing

def _top(r: dict, k: int = 5) -> list[str]:
    """The `k` fastest layouts of one search, tokens/s of the mode searched."""
    rows = {c["label"]: c for c in r["candidates"]}
    out = [f"| # | layout | step s | {r['mode']} tokens/s | MFU | GB/device | dominant |",
           "|---|---|---|---|---|---|---|"]
    for i, label in enumerate(r["ranking"][:k], 1):
        s, mark = rows[label]["projection"], priced_only_mark(label)
        dom = s["dominant"]
        out.append(f"| {i} | `{label}` | {num(s['step_seconds'])}{mark} | "
                   f"{num(s['tokens_per_s'])}{mark} | {pct(s['mfu'])} | "
                   f"{s['memory_bytes'] / 1e9:.1f} | {dom} "
                   f"{pct(s['terms'][dom] / s['step_seconds'], 0)} |")
    return out + priced_only_footnote(r["ranking"][:k])


def _nothing_fits(r: dict) -> str:
    return "Nothing fits: " + r["nothing_fits"] + "."


def _counts(r: dict) -> str:
    n = r["counts"]
    return (f"{n['considered']} legal candidates ({n['illegal']} illegal); pruned "
            f"{n['pruned_memory']} by memory and {n['pruned_time']} by time; projected "
            f"{n['projected']} ({n['fit']} fit); {r['cache']['compiles']} programs compiled in "
            f"{r['seconds']:.0f} s")


def _why(r: dict) -> str:
    """The run's reason line, its best layout marked when only the cost model prices it."""
    return "Why: " + mark_why(r["why"], r["best"]) + "."


def _paper_md(paper: list[dict]) -> list[str]:
    """The paper's models on 16 GPUs: one row per search, then each search's fastest five."""
    lines = ["## The paper's models on 16 GPUs", "",
             "| model | mode | hardware | best | step s | tokens/s of that mode | margin over "
             "runner-up | candidates: legal / projected / fit | bound violations | cold s | warm s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in paper:
        best = best_candidate(r)
        s, mark = (best["projection"] if best else None), priced_only_mark(r["best"])
        n, margin = r["counts"], r["margin_over_runner_up"]
        warm = f"{r['warm']['seconds']:.1f}" if "warm" in r else "–"
        lines.append(
            f"| {r['model']} | {run_mode(r)} | {r['hardware']} | "
            f"{'`' + r['best'] + '`' if r['best'] else 'nothing fits'} | "
            f"{num(s['step_seconds']) + mark if s else '–'} | "
            f"{num(s['tokens_per_s']) + mark if s else '–'} | "
            f"{pct(margin) if margin is not None else '–'} | {n['considered']} / "
            f"{n['projected']} / {n['fit']} | {len(r['bound_violations'])} | "
            f"{r['seconds']:.0f} | {warm} |")
    lines += priced_only_footnote(r["best"] for r in paper)
    lines += ["", "Cold: an empty cache; warm: the same search again (every projection "
              "reused). The dgx-h100 searches re-price the programs that the h100-paper "
              "searches compiled. Machine load during each run is in plan.json "
              "(`conditions`).", ""]
    for r in paper:
        lines += [f"### {r['model']}, {run_mode(r)}, {r['hardware']}", "", _counts(r) + ".", "",
                  *(_top(r) if r["best"] else [_nothing_fits(r)]), "", _why(r), ""]
    return lines


def _megatron_md(mega: list[dict]) -> list[str]:
    """Megatron-LM's published configurations: measured, our projection of the same layout, and
    the best the planner found."""
    lines = ["## Megatron-LM's published configurations (dgx-h100, training steps)", "",
             "The published layout (experiments/validate_measured.py) is projected beside "
             "the best the planner finds in Megatron's own space (`--kinds tp-pp`); the measured "
             "step is the published run's.", "",
             "| row | GPUs | measured s | published layout | its projection s | best found | "
             "its projection s | what changed |", "|---|---|---|---|---|---|---|---|"]
    for r in mega:
        m, best = r["megatron"], best_candidate(r)
        step = best["projection"]["step_seconds"] if best else None
        pub = m.get("published_projected_s")
        lines.append(f"| {m['label']} | {m['devices']} | {num(m['measured_s'])} | "
                     f"`{m['published']}` | {num(pub)}{priced_only_mark(m['published'])}"
                     f"{'' if m.get('published_fits', True) else ' (does not fit)'} | "
                     f"`{r['best']}` | {num(step)}{priced_only_mark(r['best'])} | "
                     f"{', '.join(m.get('changes') or []) or '–'} |")
    lines += priced_only_footnote([r["best"] for r in mega] + [r["megatron"]["published"]
                                                                for r in mega])
    lines.append("")
    for r in mega:
        m = r["megatron"]
        pub = next((c for c in r["candidates"] if c["label"] == m["published"]), None)
        if pub and pub["projection"] and not pub["projection"]["fits"]:
            lines += [f"{m['label']}'s published layout does not fit here: "
                      f"{pub['projection']['fits_why']}. The published runs' activation "
                      "recompute and sequence parallelism are not stated; the published row "
                      "is projected with both off (as experiments/validate_measured.py "
                      "does), and the layouts found turn sequence parallelism on.", ""]
    for r in mega:
        lines += [f"### {r['megatron']['label']}", "", _counts(r) + ".", "", *_top(r), "",
                  _why(r), ""]
    return lines


def markdown(report: dict) -> str:
    """results/plan.md from the plan report (with `rendered_by`: says it was rendered again)."""
    lines = ["# Which layout should I use? `helix plan`", "",
             markdown_header(report["generated_by"]), ""]
    if report.get("rendered_by"):
        lines += [rendered_note(report["rendered_by"], "plan.json"), ""]
    lines += ["Every legal layout of the model on the GPUs, pruned by lower bounds on memory and "
              "step time, compiled on fake devices and priced (docs/plan.md). Bounds never exceed "
              "a projection: `bound violations` counts projections that came in under their "
              "bounds (none expected).", ""]
    paper = [r for r in report["runs"] if "megatron" not in r]
    if paper:
        lines += _paper_md(paper)
    mega = [r for r in report["runs"] if "megatron" in r]
    if mega:
        lines += _megatron_md(mega)
    lines += ["![Pareto charts](plan.png)", ""]
    return "\n".join(lines)


def chart(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in runs if r["hardware"] == "h100-paper" and r["mode"] in ("forward", "train")
             and "megatron" not in r]
    cols = 2
    rows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, 5 * rows), squeeze=False)
    for ax, r in zip(axes.flat, shown):
        draw_pareto(ax, r["_plan"], f"{r['model']} {r['mode']} on 16 x {r['hardware']}")
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.suptitle("helix plan: memory per device against step time, every candidate", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results", help="output folder (default: results)")
    parser.add_argument("--only", choices=("paper", "megatron"))
    parser.add_argument("--cache-dir", help="plan cache (default: a new empty folder, so that "
                        "the recorded cold times are cold)")
    parser.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite plan.md and the README's planner block from <out>/plan.json, "
                        "searching nothing (plan.png needs the searches: left as it is)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if not out.is_dir():
        raise SystemExit(f"plan: output folder {out} does not exist; create it")
    if args.render_only:
        return render_only(out, readme=not args.no_readme)
    cache_dir = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="plan-"))
    start = time.perf_counter()
    runs = (paper_section(cache_dir) if args.only != "megatron" else []) + \
        (megatron_section(cache_dir) if args.only != "paper" else [])
    command = "python experiments/plan.py" + (f" --only {args.only}" if args.only else "")
    seconds = time.perf_counter() - start
    if args.only != "megatron":  # the charts show the paper's searches
        chart(runs, out / "plan.png")
    for r in runs:
        r.pop("_plan")
    kept = []
    if args.only and (out / "plan.json").is_file():  # keep the other section's runs
        kept = [r for r in json.loads((out / "plan.json").read_text())["runs"]
                if ("megatron" in r) == (args.only == "paper")]
    runs = [r for r in runs if "megatron" not in r] + [r for r in kept if "megatron" not in r] + \
        [r for r in runs if "megatron" in r] + [r for r in kept if "megatron" in r]
    report = {"generated_by": generated_by(command), "seconds": seconds, "runs": runs}
    (out / "plan.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "plan.md").write_text(markdown(report))
    print(f"wrote {out / 'plan.json'}, plan.md, plan.png in {report['seconds']:.0f} s")
    if not args.no_readme:
        write_readme(report, out)
    return 0


def write_readme(report: dict, out: Path) -> None:
    """Rewrite the README's planner block from `report` when `out` is the committed results."""
    if out.resolve() == (HERE.parent / "results").resolve():
        readme = HERE.parent / "README.md"
        readme.write_text(replace_readme_block(readme.read_text(), readme_block(report)))
        print(f"rewrote the planner block of {readme}")


def render_only(out: Path, readme: bool) -> int:
    """plan.md (and the README's block) from the committed plan.json, with the wording of this
    commit and the numbers of the run that wrote plan.json (its `generated_by` kept)."""
    report = json.loads((out / "plan.json").read_text())
    report["rendered_by"] = generated_by("python experiments/plan.py --render-only"
                                         + ("" if out == Path("results") else f" --out {out}"))
    (out / "plan.md").write_text(markdown(report))
    print(f"rewrote {out / 'plan.md'} from {out / 'plan.json'}")
    if readme:
        write_readme(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
