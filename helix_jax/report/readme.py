"""The README's "What the numbers say" block, written from `results/reproduce.json`.

The README keeps the block between two markers; `python -m helix_jax.report.readme` rewrites it
from the committed report, and the test suite fails when the two disagree, so the README never
quotes a number that the last `helix reproduce` did not produce.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from helix_jax.report.fmt import gb, num
from helix_jax.report.ranking import fastest_that_fits

START, END = "<!-- numbers:start -->", "<!-- numbers:end -->"
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
            out[c["group_size"]] = out.get(c["group_size"], 0.0) + c["payload_bytes_per_device"] * c["count"]
    return out


def numbers_block(report: dict) -> str:
    """The Markdown between the markers: the table and the sentences computed from `report`."""
    hw = report["meta"]["hardware"]
    lines = [f"From `results/reproduce.json` (projections on the `{hw}` profile; regenerate with "
             "`helix reproduce`, then `python -m helix_jax.report.readme`):", "",
             "| model | layout | paper claims tokens/s | projected tokens/s | memory/GPU |",
             "|---|---|---|---|---|"]
    for table, specs in ROWS.items():
        for spec in specs:
            r = _row(report, table, spec)
            p, c = r["projection"], r["claim"]
            label = f"`{spec}`" + (f" {LABELS[spec]}" if spec in LABELS else "")
            lines.append(f"| {'dense' if table == 'dense' else 'MoE'} | {label} | "
                         f"{num(c and c['tokens_per_s'])} | {num(p['tokens_per_s'])} | "
                         f"{gb(p['memory_gb'] * 1e9)} |")
    tp, helix, a2a = (_row(report, "dense", s) for s in ("tp-pp", "helix", "helix:core=seq_a2a"))
    m = helix["mesh"].get("dim", 1)
    reduce = _comm_by_group(helix, "all-reduce")
    score, output = reduce.get(m, 0.0), reduce.get(helix["projection_detail"]["devices"], 0.0)
    def tps(r: dict) -> float:
        return r["projection"]["tokens_per_s"]

    def claimed(a: dict, b: dict) -> str:
        return f"{a['claim']['tokens_per_s'] / b['claim']['tokens_per_s']:.2f}x"

    order = "below" if tps(helix) < tps(tp) else "above"
    best_dense = fastest_that_fits(report["tables"]["dense"]["rows"])
    moe_tp, moe_ep = _row(report, "moe", "tp-pp"), _row(report, "moe", "ep")
    best_moe = fastest_that_fits(report["tables"]["moe"]["rows"])
    verdicts = report["cannot_hold"]
    lines += ["",
              f"The paper's helix core (`score_psum`) reaches {tps(helix) / tps(tp):.2f}x TP×PP's "
              f"projected throughput, {order} it (the paper claims {claimed(helix, tp)}): its score all-reduce "
              f"over the {m} head-dim shards moves {gb(score, 0)} per GPU per step (L·B·(H/n)·S² "
              f"elements, causal blocks only), against {gb(output, 0)} for all of its output "
              f"all-reduces. The same weight layout with the `seq_a2a` core gets "
              f"{tps(a2a) / tps(helix):.2f}x the paper's core. The fastest dense layout that fits "
              f"is `{best_dense['row']}` at {num(tps(best_dense))} tokens/s."
              if best_dense else "No dense layout fits in memory.",
              "",
              f"For the MoE model, EP reaches {tps(moe_ep) / tps(moe_tp):.2f}x TP×PP (the paper "
              f"claims {claimed(moe_ep, moe_tp)}); the fastest MoE layout that fits is `{best_moe['row']}` at "
              f"{num(tps(best_moe))} tokens/s." if best_moe else "No MoE layout fits in memory.",
              "",
              f"`results/reproduce.md` lists {len(verdicts)} checks of the paper's figures "
              "computed from these numbers."]
    return "\n".join(lines)


def update(readme: Path, report: dict) -> bool:
    """Rewrite the block in `readme`; True when it changed."""
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme}: no {START} ... {END} block to rewrite")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{numbers_block(report)}\n{END}{tail}"
    if new != text:
        readme.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--report", default="results/reproduce.json")
    args = parser.parse_args(argv)
    changed = update(Path(args.readme), json.loads(Path(args.report).read_text()))
    print(f"{args.readme}: {'rewritten' if changed else 'already up to date'} from {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
