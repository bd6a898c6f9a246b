"""`helix plan` as a reader sees it: the ranked table, the one-line reason the best wins, `--explain`
for any layout, the JSON and the Pareto chart of memory per device against step time.

The search itself is `helix_jax.analysis.planner.search`, run by `helix_jax.commands.plan`; this
module only formats what it found.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from helix_jax.report.fmt import num, pct
from helix_jax.report.wording import (
    PRICED_ONLY,
    mark_why,
    priced_only_footnote,
    priced_only_mark,
    priced_only_options,
)
from helix_jax.units import gb

if TYPE_CHECKING:  # the analysis (and jax) load when a plan runs, not when the CLI starts
    from helix_jax.analysis.planner.rows import Plan

SHORT_TERM = {"compute": "compute", "HBM": "HBM", "exposed NVLink": "NVLink",
              "exposed InfiniBand": "InfiniBand", "pipeline bubble": "bubble"}


# ----------------------------------------------------------------------------- sentences

def describe_best(plan: Plan) -> str:
    """'dp: compute 3.06 s of its 3.06 s step, no exposed communication'."""
    from helix_jax.analysis.planner.explain import TERMS, step_terms

    best = plan.best
    if best is None:
        return "nothing fits"
    t = step_terms(best.projection, plan.hw)
    main = max(TERMS, key=lambda k: t[k])
    comm = t["exposed NVLink"] + t["exposed InfiniBand"]
    text = f"{main} {num(t[main])} s of its {num(best.step)} s step"
    if comm <= 0.01 * best.step:
        text += ", no exposed communication"
    else:
        text += f", {num(comm)} s exposed communication"
    return f"{best.candidate.label}: {text}"


def loses_line(c: dict) -> str:
    """'tp-pp loses 6.4 s to exposed InfiniBand (all-reduce); 3.7x slower'."""
    label = c["label"]
    if c.get("step_seconds") is None:
        return f"{label}: {c['status']}"
    if c["slower_by"] <= 0:
        return f"{label} is the best"
    what = c["main_term"] + (f" ({c['main_op']})" if c.get("main_op") else "")
    text = (f"{label} loses {num(c['main_delta_seconds'])} s to {what}, "
            f"{num(1 + c['slower_by'])}x the step")
    if not c["fits"]:
        text += f", and does not fit ({gb(c['memory_bytes'])})"
    return text


def reason_line(plan: Plan) -> str:
    """The one line saying why the best wins against the named layouts."""
    from helix_jax.analysis.planner.explain import compare

    if plan.best is None:
        return "no candidate fits"
    others = [compare(plan, a) for a in plan.anchors if a != plan.ranking[0]]
    lines = [loses_line(c) for c in others]
    return describe_best(plan) + ("; " + "; ".join(lines) if lines else "")


def explain_lines(plan: Plan, label: str) -> list[str]:
    """Why candidate `label` is where it is: status, rank, its step term by term against the
    best, memory, its heaviest collectives and, for a pruned one, the bound that pruned it."""
    from helix_jax.analysis.planner.explain import compare, option_changes, summary

    row = plan.rows[label]
    out = [f"{label} ({row.role or 'candidate'}): {row.status}"
           + (f" ({row.pruned_by})" if row.pruned_by else "")]
    if only := priced_only_options(label):
        out.append(f"  {PRICED_ONLY} priced only: the runtime does not run {', '.join(only)} yet")
    if row.bounds is not None:
        out.append(f"  lower bounds: {num(row.bounds.seconds)} s per step (compute "
                   f"{num(row.bounds.compute_seconds)} s + communication "
                   f"{num(row.bounds.comm_seconds)} s), {gb(row.bounds.memory_bytes)} per device")
    if row.error:
        out.append(f"  error: {row.error}")
    s = summary(row, plan.hw)
    if s is None:
        return out
    rank = plan.ranking.index(label) + 1 if label in plan.ranking else None
    out.append(f"  step {num(s['step_seconds'])} s = " + " + ".join(
        f"{SHORT_TERM[k]} {num(v)}" for k, v in s["terms"].items() if v > 0)
        + f"; {num(s['tokens_per_s'])} tokens/s, MFU {pct(s['mfu'])}"
        + (f"; rank {rank} of {len(plan.ranking)}" if rank else ""))
    out.append(f"  memory {gb(s['memory_bytes'])} per device: "
               + (s["fits_why"] or ("fits" if s["fits"] else "does not fit")))
    best = plan.best
    if best is not None and best.candidate.label != label:
        c = compare(plan, label)
        gaps = sorted(((d, k) for k, d in c["deltas"].items() if abs(d) > 1e-3 * best.step),
                      reverse=True)
        out.append(f"  against the best {best.candidate.label} ({num(best.step)} s): "
                   + ", ".join(f"{SHORT_TERM[k]} {'+' if d > 0 else ''}{num(d)} s"
                               for d, k in gaps))
        changes = option_changes(row.candidate, best.candidate)
        if changes and row.candidate.layout.kind == best.candidate.layout.kind:
            out.append("  the best changes: " + ", ".join(changes))
    for x in s["top_collectives"]:
        out.append(f"  {x['op']} over {x['group_size']} on {x['link']}: {x['count']} x "
                   f"{x['payload_bytes'] / 1e6:,.1f} MB, {num(x['seconds'])} s"
                   + (" (data-parallel, may overlap)" if x["data_parallel"] else ""))
    return out


# ----------------------------------------------------------------------------- terminal

def print_plan(plan: Plan, top: int = 10) -> None:
    """The ranked table and the sentences (what `helix plan` prints)."""
    from rich.console import Console
    from rich.table import Table

    from helix_jax.analysis.planner.explain import summary

    console = Console(width=None if sys.stdout.isatty() else 150)
    cfg, n = plan.cfg, plan.counts()
    console.print(
        f"[bold]{cfg.name}[/] {plan.mode}, batch {cfg.batch} x seq {cfg.seq} {cfg.dtype}, on "
        f"{plan.devices} devices of [bold]{plan.hw.name}[/] ({gb(plan.hw.hbm_capacity_bytes, 0)} "
        f"each)")
    console.print(
        f"candidates: {n['considered']} legal of {n['enumerated']} enumerated ({n['illegal']} "
        f"illegal); pruned {n['pruned_memory']} by the memory bound and {n['pruned_time']} by "
        f"the time bound"
        + (f", {n['skipped_recompute']} not tried with more recompute than they need"
           if n["skipped_recompute"] else "")
        + f"; projected {n['projected']}: {n['fit']} fit, {n['do_not_fit']} do not"
        + (f", {n['errors']} failed" if n["errors"] else "")
        + f". {plan.seconds:.0f} s, {plan.cache.stats.compiles} programs compiled, "
        f"{plan.cache.stats.program_hits} from the cache"
        + (f", {plan.cache.stats.priced_hits} projections reused" if plan.cache.stats.priced_hits
           else ""))
    table = Table(title=f"fastest {min(top, len(plan.ranking))} of the {len(plan.ranking)} "
                        f"that fit")
    for col in ("#", "layout", "step s", "tokens/s", "MFU", "GB/device", "dominant", "vs best"):
        table.add_column(col, justify="left" if col in ("layout", "dominant") else "right",
                         overflow="fold")
    best = plan.best
    for i, label in enumerate(plan.ranking[:top], 1):
        s = summary(plan.rows[label], plan.hw)
        dom = s["dominant"]
        mark = priced_only_mark(label)
        table.add_row(str(i), label, num(s["step_seconds"]) + mark, num(s["tokens_per_s"]) + mark,
                      pct(s["mfu"]), f"{s['memory_bytes'] / 1e9:.1f}",
                      f"{dom} {pct(s['terms'][dom] / s['step_seconds'], 0)}",
                      "best" if i == 1 else f"+{pct(s['step_seconds'] / best.step - 1)}")
    console.print(table)
    for line in priced_only_footnote(plan.ranking[:top])[1:]:
        console.print(line, markup=False)
    if best is None:
        from helix_jax.analysis.planner.explain import nothing_fits

        console.print("[red]no candidate fits[/]: " + nothing_fits(plan))
        return
    if len(plan.ranking) > 1:
        runner = plan.rows[plan.ranking[1]]
        console.print(f"best {best.candidate.label}: {pct(runner.step / best.step - 1)} faster than "
                      f"the runner-up {runner.candidate.label}")
    console.print("why: " + mark_why(reason_line(plan), best.candidate.label))
    for label in plan.explain:
        console.print("\n".join(explain_lines(plan, label)))


# ----------------------------------------------------------------------------- files

def plan_report(plan: Plan, command: str) -> dict:
    """The plan's JSON with provenance, the reason line and the explanations as text."""
    from helix_jax.analysis.planner.explain import to_json
    from helix_jax.report.provenance import generated_by

    out = {"generated_by": generated_by(command), **to_json(plan)}
    out["why"] = reason_line(plan)
    out["explain_text"] = {label: explain_lines(plan, label) for label in plan.explain}
    return out


def pareto_chart(plan: Plan, path: str | Path, title: str | None = None) -> None:
    """The Pareto chart of one plan (`draw_pareto`) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    draw_pareto(ax, plan, title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw_pareto(ax, plan: Plan, title: str | None = None) -> None:
    """Memory per device against step time for every candidate: projected ones at their
    projection (fitting or not); pruned ones drawn as bounds, not results: a faint arrow from
    their lower bounds towards more time and memory (the true point lies somewhere beyond); the
    best marked."""
    groups = {"fits": ([], [], "o", "#4C72B0"), "does not fit": ([], [], "x", "#8C8C8C")}
    pruned: tuple[list[float], list[float]] = ([], [])
    for r in plan.rows.values():
        if r.projection is not None:
            key = "fits" if r.projection["fits"] else "does not fit"
            groups[key][0].append(r.step)
            groups[key][1].append(r.projection["memory_bytes_per_device"] / 1e9)
        elif r.bounds is not None and r.status.startswith("pruned"):
            pruned[0].append(r.least_seconds)
            pruned[1].append(r.bounds.memory_bytes / 1e9)
    for name, (xs, ys, marker, color) in groups.items():
        if xs:
            ax.scatter(xs, ys, marker=marker, color=color, s=22, alpha=0.85,
                       label=f"{name} ({len(xs)})")
    if pruned[0]:  # lower limits, as error bars with arrows (log axes: a factor of 1.6 long)
        xs, ys = pruned
        ax.errorbar(xs, ys, xerr=[[0.0] * len(xs), [0.6 * x for x in xs]],
                    yerr=[[0.0] * len(ys), [0.6 * y for y in ys]], xlolims=True, lolims=True,
                    fmt="none", ecolor="#DD8452", alpha=0.3, lw=0.6,
                    label=f"pruned: lower bounds only ({len(xs)}; the true point lies beyond)")
    front = _pareto_front(plan)
    if front:
        ax.step([x for x, _ in front], [y for _, y in front], where="post", color="#4C72B0",
                lw=1, alpha=0.6, label="Pareto front of those that fit")
    best = plan.best
    if best is not None:
        bx, by = best.step, best.projection["memory_bytes_per_device"] / 1e9
        mark = priced_only_mark(best.candidate.label)
        ax.scatter([bx], [by], marker="*", s=260, color="#C44E52", zorder=5,
                   label=f"chosen: {best.candidate.label}{mark}"
                   + (" (priced only: the runtime does not run it yet)" if mark else ""))
    for label in plan.anchors:
        r = plan.rows[label]
        if r.projection is not None and (best is None or label != best.candidate.label):
            ax.annotate(label, (r.step, r.projection["memory_bytes_per_device"] / 1e9),
                        fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.axhline(plan.hw.hbm_capacity_bytes / 1e9, color="#C44E52", ls="--", lw=1,
               label=f"capacity {gb(plan.hw.hbm_capacity_bytes, 0)}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step time, seconds (log)")
    ax.set_ylabel("memory per device, GB (log)")
    cfg = plan.cfg
    ax.set_title(title or f"helix plan: {cfg.name} {plan.mode} on {plan.devices} x {plan.hw.name}",
                 fontsize=10)
    ax.legend(fontsize=7, loc="best", framealpha=0.85)
    ax.grid(True, which="both", alpha=0.25)


def _pareto_front(plan: Plan) -> list[tuple[float, float]]:
    points = sorted((r.step, r.projection["memory_bytes_per_device"] / 1e9)
                    for r in plan.rows.values() if r.status == "ranked")
    front, low = [], float("inf")
    for x, y in points:
        if y < low:
            front.append((x, y))
            low = y
    return front


# ----------------------------------------------------------------------------- the README

PLAN_START, PLAN_END = "<!-- plan:start -->", "<!-- plan:end -->"


def run_mode(r: dict) -> str:
    """A run's mode from results/plan.json, with its batch when it is not the model's own."""
    own = r.get("default_batch", r["config"]["batch"])
    return r["mode"] + (f" (batch {r['batch']})" if r["batch"] != own else "")


def readme_block(report: dict) -> str:
    """The README's planner block, from results/plan.json (`experiments/plan.py` writes both;
    tests/test_plan.py checks that they agree)."""
    lines = ["**Which layout should I use?** `helix plan` compiles and prices every legal layout "
             "for the GPUs it is given, after pruning those whose lower bounds rule them out "
             "([results/plan.md](results/plan.md), from `python experiments/plan.py`; "
             "[docs/plan.md](docs/plan.md)). On 16 GPUs of `h100-paper` (tokens/s of the step "
             "named):", "",
             "| model | step | best layout | step s | tokens/s | MFU | legal layouts | "
             "projected | search s (cold / warm) |", "|---|---|---|---|---|---|---|---|---|"]
    paper = [r for r in report["runs"] if "megatron" not in r and r["hardware"] == "h100-paper"]
    for r in paper:
        best = best_candidate(r)
        if best is None:
            continue
        s, n, mark = best["projection"], r["counts"], priced_only_mark(r["best"])
        warm = f"{r['warm']['seconds']:.0f}" if "warm" in r else "–"
        lines.append(f"| {r['model']} | {run_mode(r)} | `{r['best']}` | {num(s['step_seconds'])}"
                     f"{mark} | {num(s['tokens_per_s'])}{mark} | {pct(s['mfu'])} | "
                     f"{n['considered']} | {n['projected']} | {r['seconds']:.0f} / {warm} |")
    trains = [r for r in paper if r["mode"] == "train" and r["best"]]
    if trains:
        lines += [""] + [f"Training {r['model']}: {mark_why(r['why'], r['best'])}." for r in trains]
    unfit = [f"{r['model']} {run_mode(r)}: nothing fits: {r['nothing_fits']}." for r in paper
             if not r["best"] and r.get("nothing_fits")]
    if unfit:
        lines += [""] + unfit
    mega = [r for r in report["runs"] if "megatron" in r]
    if mega:
        lines += ["", megatron_sentence(mega)]
    return "\n".join(lines + priced_only_footnote(r["best"] for r in paper + mega))


def best_candidate(run: dict) -> dict | None:
    """The best candidate's entry of one run of results/plan.json, or None when nothing fits."""
    return next((c for c in run["candidates"] if c["label"] == run["best"]), None)


def megatron_sentence(runs: list[dict]) -> str:
    """Megatron-LM's published configurations: the measured step beside our projection of the
    same published layout, then the best layout the planner found and what it changed."""
    parts = []
    for r in runs:
        m, best = r["megatron"], best_candidate(r)
        if best is None or m.get("published_projected_s") is None:
            parts.append(f"{m['label']}: no layout fits")
            continue
        step, pub = best["projection"]["step_seconds"], m["published_projected_s"]
        changes = ", ".join(m.get("changes") or []) or "nothing"
        fits = "" if m.get("published_fits", True) else " (it does not fit in 80 GB here)"
        parts.append(f"{m['label']} on {m['devices']} GPUs: measured {num(m['measured_s'])} s, "
                     f"projected {num(pub)} s{priced_only_mark(m['published'])}{fits}; best found "
                     f"{num(step)} s{priced_only_mark(r['best'])} ({pct(1 - step / pub)} less than "
                     f"that projection; changed: {changes})")
    return ("Megatron-LM's published training configurations (dgx-h100, the same model, GPUs, "
            "batch and sequence; searched over tp-pp), each as measured and as we project the "
            "same published layout: " + "; ".join(parts) + ".")


def replace_readme_block(text: str, block: str) -> str:
    """`text` with the planner block replaced (or put after the numbers block the first time)."""
    wrapped = f"{PLAN_START}\n{block}\n{PLAN_END}"
    if PLAN_START in text and PLAN_END in text:
        head, rest = text.split(PLAN_START, 1)
        return head + wrapped + rest.split(PLAN_END, 1)[1]
    anchor = "<!-- numbers:end -->"
    if anchor not in text:
        raise ValueError("README.md has no '<!-- numbers:end -->' marker to put the plan after")
    head, rest = text.split(anchor, 1)
    return head + anchor + "\n\n" + wrapped + rest
