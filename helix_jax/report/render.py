"""Render `helix reproduce`'s committed report again from its JSON, compiling and pricing nothing:
the checks of the paper's figures recomputed (`paper`) from the claims and the projections the JSON
holds, `<name>.md` and the charts rewritten, then the README's numbers block.

    python -m helix_jax.report.render [--out results] [--name reproduce] [--readme README.md]

Used when the wording changes and the numbers do not. The JSON keeps `generated_by` (the run that
made its numbers) and gains `rendered_by` (this command), which the Markdown also states.
(`python experiments/plan.py --render-only` does the same for results/plan.md.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from helix_jax.analysis.costmodel.hardware import Hardware


def hardware_from_report(report: dict) -> Hardware:
    """The hardware profile the report's projections were priced on, as the report recorded it."""
    fields = {f.name for f in dataclasses.fields(Hardware)}
    data = {k: v for k, v in report["hardware"].items() if k in fields}
    data["allreduce_busbw"] = tuple(tuple(x) for x in data.get("allreduce_busbw", ()))
    return Hardware(**data)


def statements(report: dict) -> list[dict]:
    """The checks of the paper's figures for `report`'s tables, from the claims and the compiled
    programs' projections it holds (the paper's shapes only: none against shrunken projections)."""
    from helix_jax.report import paper

    hw = hardware_from_report(report)
    if report["meta"].get("project_overrides"):
        found = paper.claim_statements(hw)
    else:
        projections = {(t, r["row"]): r["projection_detail"] for t, res in report["tables"].items()
                       for r in res["rows"] if r.get("projection_detail")}
        found = paper.cannot_hold(hw, projections)
    return [s for s in found if set(s["tables"]) & set(report["tables"])]


def render_reproduce(out_dir: str | Path = "results", name: str = "reproduce",
                     charts: bool = True, command: str | None = None) -> dict:
    """Rewrite `<out_dir>/<name>.md`, its checks in `<name>.json` and (with `charts`) its PNGs
    from `<name>.json`; return the report."""
    from helix_jax.report.provenance import generated_by
    from helix_jax.report.reproduce import markdown, write_charts

    out = Path(out_dir)
    path = out / f"{name}.json"
    report = json.loads(path.read_text())
    report["cannot_hold"] = json.loads(json.dumps(statements(report)))  # as the JSON stores them
    report["rendered_by"] = generated_by(command or "python -m helix_jax.report.render")
    if charts:
        written = [f.name for f in write_charts(report, out, name)]
        report["files"] = [f for f in report.get("files", []) if not f.endswith(".png")] + written
    (out / f"{name}.md").write_text(markdown(report))
    path.write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    """Re-render the report and, for the committed results, the README's numbers block."""
    from helix_jax.report import readme

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results", help="folder of <name>.json (default results)")
    parser.add_argument("--name", default="reproduce", help="report name (default reproduce)")
    parser.add_argument("--readme", default="README.md",
                        help="README whose numbers block to rewrite ('' to leave it alone)")
    parser.add_argument("--no-charts", dest="charts", action="store_false",
                        help="leave the PNGs as they are")
    args = parser.parse_args(argv)
    command = " ".join(["python -m helix_jax.report.render",
                        *(sys.argv[1:] if argv is None else argv)])
    report = render_reproduce(args.out, args.name, args.charts, command)
    print(f"rewrote {Path(args.out) / (args.name + '.md')} and its checks from "
          f"{args.name}.json" + (" and the charts" if args.charts else ""))
    if args.readme:
        validation = Path(args.out) / "validation.json"
        changed = readme.update(Path(args.readme), report,
                                json.loads(validation.read_text()) if validation.is_file() else None)
        print(f"{args.readme}: {'rewritten' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
