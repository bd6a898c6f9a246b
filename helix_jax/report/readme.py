"""The README's blocks of numbers, written from the committed results: "What the numbers say"
from `results/reproduce.json` and "How accurate are the projections?" from
`results/validation.json`.

The README keeps each block between two markers; `python -m helix_jax.report.readme` rewrites them
from the committed reports, and the test suite fails when they disagree, so the README never
quotes a number that the last run did not produce.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from helix_jax.report.fmt import num
from helix_jax.report.ranking import fastest_that_fits
from helix_jax.report.wording import above, beats, priced_only_mark
from helix_jax.units import gb

START, END = "<!-- numbers:start -->", "<!-- numbers:end -->"
VALIDATION_START, VALIDATION_END = "<!-- validation:start -->", "<!-- validation:end -->"
ROWS = {"dense": ("tp-pp", "helix", "helix:core=seq_a2a", "dp"),
        "moe": ("tp-pp", "ep", "ep:chunks=4")}
LABELS = {"tp-pp": "(baseline)", "helix": "(the paper's score_psum core)"}


def _row(report: dict, table: str, spec: str) -> dict:
    return next(r for r in report["tables"][table]["rows"] if r["row"] == spec)


def _comm_by_group(row: dict, op: str) -> dict[int, float]:
    """Bytes per device of one collective op, by group size, from a row's compiled program."""
    out: dict[int, float] = {}
    for c in row["projection_detail"]["collectives"]:
        if c["op"] == op:
            size = c["payload_bytes_per_device"] * c["count"]
            out[c["group_size"]] = out.get(c["group_size"], 0.0) + size
    return out


def numbers_block(report: dict) -> str:
    """The Markdown between the markers: the table and the sentences computed from `report`."""
    hw = report["meta"]["hardware"]
    lines = [f"From `results/reproduce.json` (projections on the `{hw}` profile; regenerate with "
             "`helix reproduce`, then `python -m helix_jax.report.readme`):", "",
             "| model | layout | paper claims tokens/s | projected forward tokens/s | memory/GPU |",
             "|---|---|---|---|---|"]
    for table, specs in ROWS.items():
        for spec in specs:
            r = _row(report, table, spec)
            p, c = r["projection"], r["claim"]
            label = f"`{spec}`" + (f" {LABELS[spec]}" if spec in LABELS else "")
            lines.append(f"| {'dense' if table == 'dense' else 'MoE'} | {label} | "
                         f"{num(c and c['tokens_per_s'])} | {num(p['tokens_per_s'])}"
                         f"{priced_only_mark(r['layout'])} | "
                         f"{gb(p['memory_gb'] * 1e9)} |")
    tp, helix, a2a = (_row(report, "dense", s) for s in ("tp-pp", "helix", "helix:core=seq_a2a"))
    m = helix["mesh"].get("dim", 1)
    reduce = _comm_by_group(helix, "all-reduce")
    score, output = reduce.get(m, 0.0), reduce.get(helix["projection_detail"]["devices"], 0.0)
    def tps(r: dict) -> float:
        return r["projection"]["tokens_per_s"]

    def claimed(a: dict, b: dict) -> str:
        return f"{a['claim']['tokens_per_s'] / b['claim']['tokens_per_s']:.2f}x"

    order = above(tps(helix), tps(tp))
    best_dense = fastest_that_fits(report["tables"]["dense"]["rows"])
    moe_tp, moe_ep = _row(report, "moe", "tp-pp"), _row(report, "moe", "ep")
    best_moe = fastest_that_fits(report["tables"]["moe"]["rows"])
    verdicts = report["cannot_hold"]
    lines += ["",
              f"The paper's helix core (`score_psum`) reaches {tps(helix) / tps(tp):.2f}x TP×PP's "
              f"projected forward throughput, {order} it (the paper claims {claimed(helix, tp)}): its "
              f"score all-reduce over the {m} head-dim shards moves {gb(score, 0)} per GPU per "
              f"step (L·B·(H/n)·S² elements, causal blocks only), against {gb(output, 0)} for "
              f"all of its output all-reduces. The same weight layout with the `seq_a2a` core gets "
              f"{tps(a2a) / tps(helix):.2f}x the paper's core. The fastest dense layout that fits "
              f"is `{best_dense['row']}` at {num(tps(best_dense))}"
              f"{priced_only_mark(best_dense['layout'])} forward tokens/s."
              if best_dense else "No dense layout fits in memory.",
              "",
              f"For the MoE model, EP {beats(tps(moe_ep), tps(moe_tp))} TP×PP in a forward pass: "
              f"{tps(moe_ep) / tps(moe_tp):.2f}x its projected throughput (the paper claims "
              f"{claimed(moe_ep, moe_tp)}); the fastest MoE layout that fits is "
              f"`{best_moe['row']}` at {num(tps(best_moe))}{priced_only_mark(best_moe['layout'])} "
              "forward tokens/s."
              if best_moe else "No MoE layout fits in memory.",
              "",
              f"`results/reproduce.md` lists {len(verdicts)} checks of the paper's figures "
              "computed from these numbers."]
    return "\n".join(lines)


def validation_block(report: dict) -> str:
    """The Markdown of the accuracy block: the summary and one line per measured row."""
    s = report["summary"]
    lines = [f"From `results/validation.json` (regenerate with `python "
             f"experiments/validate_measured.py`): over {s['rows']} published training-step "
             f"measurements the projected step is off by {s['median_abs_error']:.1%} at the median "
             f"and {s['worst_abs_error']:.1%} at worst. The naive model that prices every row at "
             f"the mean MFU of the others is off by {s['constant_mfu_median_abs_error']:.1%} at "
             f"the median and {s['constant_mfu_worst_abs_error']:.1%} at worst.", "",
             "| measured row | hardware | measured s | projected s | error | constant MFU error |",
             "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['label']} ({r['source'].split(',')[0].split(' (')[0]}) | "
                     f"{r['hardware']} | {r['measured']:.2f} | {r['projected_step_s']:.2f} | "
                     f"{r['error']:+.1%} | {r['constant_mfu_error']:+.1%} |")
    if report.get("decode"):
        d = report["decode_summary"]
        lines += ["", f"Decode: over {d['rows']} published inter-token latencies (NVIDIA NIM, "
                  f"Llama-3.3-70B on 2 x H100, TP 2) the projected ITL (the decode step plus "
                  f"the amortised prefills of the requests that join the batch meanwhile) is off "
                  f"by {d['median_abs_error']:.1%} at the median and {d['worst_abs_error']:.1%} "
                  f"at worst (weights priced as {', '.join(d['weights_priced'])}, W8A8); the "
                  f"naive model (HBM floor over the mean achieved fraction of the others, plus "
                  f"the same prefill term) by {d['naive_median_abs_error']:.1%} and "
                  f"{d['naive_worst_abs_error']:.1%}, and without the prefill term by "
                  f"{d['naive_floor_only_median_abs_error']:.1%} and "
                  f"{d['naive_floor_only_worst_abs_error']:.1%}.", "",
                  "| decode batch | context | measured ITL ms | projected ITL ms | error | "
                  "decode step ms | naive error |", "|---|---|---|---|---|---|---|"]
        for r in report["decode"]:
            lines.append(f"| {r['batch']} | {r['context']:,} | {r['measured_ms']:.2f} | "
                         f"{r['projected_ms']:.2f} | {r['error']:+.1%} | {r['step_ms']:.2f} | "
                         f"{r['naive_error']:+.1%} |")
    return "\n".join(lines)


def _replace(text: str, start: str, end: str, body: str, where: Path) -> str:
    if start not in text or end not in text:
        raise ValueError(f"{where}: no {start} ... {end} block to rewrite")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def block(text: str, start: str, end: str) -> str:
    """The text between two markers (stripped)."""
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def update(readme: Path, report: dict, validation: dict | None = None) -> bool:
    """Rewrite the blocks in `readme`; True when it changed."""
    text = readme.read_text()
    new = _replace(text, START, END, numbers_block(report), readme)
    if validation is not None:
        new = _replace(new, VALIDATION_START, VALIDATION_END, validation_block(validation), readme)
    if new != text:
        readme.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--report", default="results/reproduce.json")
    parser.add_argument("--validation", default="results/validation.json")
    args = parser.parse_args(argv)
    validation = Path(args.validation)
    changed = update(Path(args.readme), json.loads(Path(args.report).read_text()),
                     json.loads(validation.read_text()) if validation.is_file() else None)
    print(f"{args.readme}: {'rewritten' if changed else 'already up to date'} from {args.report}"
          + (f" and {validation}" if validation.is_file() else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
