"""Words every report computes instead of typing: the mark on a layout that only the cost model
runs, and the verb of a comparison, chosen from the numbers it compares.

`helix train` runs every schedule the cost model prices (GPipe, 1F1B, interleaved 1F1B) and
`tp_overlap=true` under sequence parallelism as collective matmuls; `tp_overlap=true` without
`sp=true` (tp > 1: its all-reduces stay whole) exists only as a formula, for published
configurations that state it (the planner never proposes it). A table that shows such a layout
puts `PRICED_ONLY` beside its numbers and `PRICED_ONLY_NOTE` under the table
(`priced_only_options` reads the layout's options, the same test `helix train` refuses them by).
"""

from __future__ import annotations

from collections.abc import Iterable

PRICED_ONLY = "†"
PRICED_ONLY_NOTE = (f"{PRICED_ONLY} priced only: the runtime does not run this overlap (`helix "
                    "train` overlaps TP as collective matmuls only under sp=true and refuses "
                    "tp_overlap=true without sp), so a marked number is the cost model's "
                    "formula, not a program helix_jax runs.")
TIE = 1e-3  # two numbers within 0.1% of each other are level


def layout_spec(label: str) -> str:
    """The layout spec of a planner label (`spec@remat@partitioner`) or of a bare spec."""
    return label.split("@", 1)[0]


def priced_only_options(label: str) -> list[str]:
    """The options of `label`'s layout that only the cost model prices (empty when the runtime
    runs the layout as priced): what makes its numbers priced-only."""
    from helix_jax.layouts import overlap_without_sp, parse_layout

    layout = parse_layout(layout_spec(label))
    return ["tp_overlap=true without sp"] if overlap_without_sp(layout) else []


def priced_only_mark(label: str | None) -> str:
    """`PRICED_ONLY` for a layout the runtime cannot run as priced, else '' (also for None)."""
    return PRICED_ONLY if label and priced_only_options(label) else ""


def priced_only_footnote(labels: Iterable[str | None]) -> list[str]:
    """`['', PRICED_ONLY_NOTE]` when any of `labels` is marked (to follow a table), else []."""
    return ["", PRICED_ONLY_NOTE] if any(priced_only_mark(x) for x in labels) else []


def mark_why(why: str, label: str | None) -> str:
    """A reason line that opens with `label` ('label: compute ...'), with the mark after the label
    when its layout is priced-only (once, however often it is applied)."""
    mark = priced_only_mark(label)
    if not mark or not label or not why.startswith(label + ":"):
        return why
    return f"{label}{mark}" + why[len(label):]


def compare(a: float, b: float, higher_is_better: bool = True) -> int:
    """1 when `a` is better than `b`, -1 when worse, 0 when they are within `TIE` of each other."""
    if abs(a - b) <= TIE * max(abs(a), abs(b)):
        return 0
    return 1 if (a > b) == higher_is_better else -1


def beats(a: float, b: float, higher_is_better: bool = True) -> str:
    """'beats', 'loses to' or 'is level with': how `a` stands against `b`."""
    return {1: "beats", -1: "loses to", 0: "is level with"}[compare(a, b, higher_is_better)]


def above(a: float, b: float) -> str:
    """'above', 'below' or 'level with': where `a` lies against `b`."""
    return {1: "above", -1: "below", 0: "level with"}[compare(a, b)]


def yes_no(a: float, b: float, higher_is_better: bool = True) -> str:
    """'yes' when `a` beats `b`, 'no' when it loses, 'level' when neither: the answer to 'does a
    beat b?'."""
    return {1: "yes", -1: "no", 0: "level"}[compare(a, b, higher_is_better)]


def rendered_note(rendered_by: dict, source: str) -> str:
    """The line that says a file was rendered again from `source` (its numbers from the run that
    wrote `source`, its wording from `rendered_by`: a `provenance.generated_by` dict)."""
    commit = rendered_by.get("git_commit") or "not a git checkout"
    return (f"Rendered again from `{source}` by `{rendered_by['command']}` (helix_jax "
            f"{rendered_by['version']}, commit {commit}) on {rendered_by.get('created_utc', '?')}: "
            "the numbers are that run's, unchanged; the tables and sentences are this commit's.")
