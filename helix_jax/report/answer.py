"""The answer `results/reproduce.md` opens with: does the paper's split beat TP x PP, and does EP
beat it, in a forward pass, a training step and a decode step, each with its numbers.

Every word of it (yes or no, fits or not) is chosen from the report's numbers (`wording`).
"""

from __future__ import annotations

from helix_jax.report.fmt import num
from helix_jax.report.wording import PRICED_ONLY_NOTE, priced_only_mark, yes_no
from helix_jax.units import gb

# the report row key of each mode, the number that says how long its step is, and that number's unit
MODES = (("forward", "projection", "step_seconds", "s a step"),
         ("training", "projection_train", "step_seconds", "s a step"),
         ("decode", "projection_decode", "tpot_ms", "ms per token"))
MODEL_NAMES = {"dense": "paper-dense", "moe": "paper-moe"}


def _row(report: dict, table: str, spec: str) -> dict | None:
    """The report's row of `spec` in `table`, or None when the table or row did not run."""
    t = report["tables"].get(table)
    return next((r for r in t["rows"] if r["row"] == spec), None) if t else None


def _fits_note(new: dict, base: dict, new_name: str, base_name: str, capacity: str) -> str:
    """'', '; `x` does not fit 80 GB' or '; neither fits 80 GB', from the two projections."""
    missing = [n for n, p in ((new_name, new), (base_name, base)) if not p["fits"]]
    if not missing:
        return ""
    if len(missing) == 2:
        return f"; neither fits {capacity}"
    return f"; `{missing[0]}` does not fit {capacity}"


def mode_cell(new_row: dict, base_row: dict, mode: str, capacity: str) -> str:
    """One cell of the answer: does `new_row` beat `base_row` in `mode`, with both numbers."""
    _, key, step_key, unit = next(m for m in MODES if m[0] == mode)
    new, base = new_row.get(key), base_row.get(key)
    if new is None or base is None:
        return "not projected"
    tn, tb = new["tokens_per_s"], base["tokens_per_s"]
    mn, mb = priced_only_mark(new_row["layout"]), priced_only_mark(base_row["layout"])
    return (f"**{yes_no(tn, tb)}**: {num(tn)}{mn} against {num(tb)}{mb} {mode} tokens/s "
            f"({tn / tb:.2f}x; {num(new[step_key])} against {num(base[step_key])} {unit})"
            + _fits_note(new, base, new_row["row"], base_row["row"], capacity))


def answer_lines(report: dict) -> list[str]:
    """The answer section: one row per comparison the paper makes, one column per mode."""
    from helix_jax.report.paper import PAIRS

    capacity = gb(report["hardware"]["hbm_capacity_bytes"], 0)
    lines = ["## The answer", "",
             (f"Projections of the full-size models on {report['meta']['hardware']} (16 GPUs; "
              "training steps without activation recompute): each cell is the paper's layout "
              "against TP×PP, tokens/s of that mode with the step beside it (the tables below "
              "have the detail)."), "",
             "| question | the paper claims | forward | training step | decode step |",
             "|---|---|---|---|---|"]
    rows = []
    for table, base, new in PAIRS:
        rn, rb = _row(report, table, new), _row(report, table, base)
        if rn is None or rb is None:
            continue
        rows += [rn, rb]
        cn, cb = rn["claim"], rb["claim"]
        said = ("–" if not (cn and cb) else
                f"{yes_no(cn['tokens_per_s'], cb['tokens_per_s'])}: "
                f"{cn['tokens_per_s'] / cb['tokens_per_s']:.2f}x ({num(cn['tokens_per_s'])} "
                f"against {num(cb['tokens_per_s'])} claimed tokens/s)")
        lines.append(f"| does `{new}` beat `{base}` on {MODEL_NAMES.get(table, table)}? | {said} | "
                     + " | ".join(mode_cell(rn, rb, m[0], capacity) for m in MODES) + " |")
    if not rows:
        return []
    if any(priced_only_mark(r["layout"]) for r in rows):
        lines += ["", PRICED_ONLY_NOTE]
    return lines + [""]
