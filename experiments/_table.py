"""Shared command line of the two table scripts: one table of `helix reproduce`, own file names."""

from __future__ import annotations

import argparse
import time

from helix_jax.devices import ensure_host_devices

ensure_host_devices(16)  # before jax starts: the tables run on 16 (fake) devices

from helix_jax.commands.reproduce import run_reproduce
from helix_jax.report.reproduce import TABLES


def main(table: str, doc: str, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", default="results", help="output folder (default: results)")
    parser.add_argument("--quick", action="store_true", help="1 warm-up and 2 timed runs per row")
    parser.add_argument("--hardware", default="h100-paper", help="hardware profile or file")
    parser.add_argument("--no-measure", dest="measure", action="store_false",
                        help="projections only, no CPU runs of the small model")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    name = f"{table}_table"
    report = run_reproduce(args.out, quick=args.quick, hardware=args.hardware,
                           progress=args.progress, tables=(table,), measure=args.measure,
                           name=name, command=f"python experiments/{name}.py"
                           + (" --quick" if args.quick else "")
                           + ("" if args.measure else " --no-measure"))
    spec = TABLES[table]
    print(f"{spec.title}: {spec.model} projected on {args.hardware}, {spec.measured_model} "
          f"measured on this machine")
    for r in report["tables"][table]["rows"]:
        p, c, m = r.get("projection"), r["claim"], r.get("measured")
        line = f"  {r['row']:<22}"
        line += f"{p['tokens_per_s']:>12,.0f} tok/s projected" if p else "  projection failed   "
        line += f"  paper {c['tokens_per_s']:>10,.0f}" if c else " " * 18
        line += f"  cpu {m['tokens_per_s_median']:>8,.0f}" if m else "  cpu not measured"
        print(line)
    print(f"wrote {', '.join(report['files'])} into {args.out} in "
          f"{time.perf_counter() - start:.0f} s")
    return 0
