"""`helix reproduce`: both of the paper's tables, each row projected at full size and measured on
the local mesh, then written as a report (`helix_jax.report.reproduce` says what the report holds
and renders it; this module runs the projections and measurements that fill it).

`experiments/dense_table.py` and `moe_table.py` run one table each through `run_reproduce`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from helix_jax import files
from helix_jax.config import ModelConfig
from helix_jax.layouts import Layout
from helix_jax.report.reproduce import DEVICES, TABLES, RowSpec, TableSpec

# ----------------------------------------------------------------------------- the command


def add_parser(sub: Any) -> None:
    """`helix reproduce` and its options."""
    p = sub.add_parser("reproduce", help="the paper's two tables: its claims, our projections "
                       "at full size and small-model runs; writes results/reproduce.{md,json,png}")
    add_reproduce_args(p)
    p.set_defaults(func=run)


def add_reproduce_args(parser: argparse.ArgumentParser) -> None:
    """Options of `helix reproduce`."""
    parser.add_argument("--out", default="results",
                        help="folder for reproduce.json, reproduce.md and the PNGs "
                        "(default: results)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer timed runs (1 warm-up, 2 timed); every row is still produced")
    parser.add_argument("--hardware", default="h100-paper",
                        help="hardware profile for the projections: a built-in name (h100-paper, "
                        "h100-sxm, dgx-h100, dgx-h200, dgx-a100) or a .json/.toml file "
                        "(default: h100-paper)")
    parser.add_argument("--tables", default="dense,moe",
                        help="comma-separated tables to produce (default: dense,moe)")
    parser.add_argument("--no-measure", dest="measure", action="store_false",
                        help="skip the CPU runs of the small models (projections only)")
    parser.add_argument("--warmup", type=int, help="untimed runs before timing (default 2; quick 1)")
    parser.add_argument("--repeat", type=int, help="timed runs (default 5; quick 2)")
    parser.add_argument("--no-train", dest="train", action="store_false",
                        help="skip the training-step projections")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Check the output folder and the hardware profile before any work, give the CPU the
    paper's 16 devices, then run the report."""
    from helix_jax.analysis.costmodel.hardware import load_hardware

    files.output_dir(args.out, "--out")
    load_hardware(args.hardware)  # a clear error before any work
    from helix_jax.devices import ensure_host_devices

    ensure_host_devices(DEVICES)  # the paper's layouts are 16-device meshes
    return cmd_reproduce(args)


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run the report and print where it went and its headline numbers."""
    from helix_jax.report.console import print_reproduce_summary

    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    report = run_reproduce(args.out, quick=args.quick, hardware=args.hardware,
                           progress=args.progress, tables=tables, measure=args.measure,
                           warmup=args.warmup, repeat=args.repeat, train=args.train)
    print_reproduce_summary(report, args.out)
    return 0


# ----------------------------------------------------------------------------- one row


def settings(quick: bool, warmup: int | None = None, repeat: int | None = None) -> dict:
    """Measurement settings: the paper warms up, times many batches and trims the extremes."""
    base = {"warmup": 1, "repeat": 2} if quick else {"warmup": 2, "repeat": 5}
    if warmup is not None:
        base["warmup"] = warmup
    if repeat is not None:
        base["repeat"] = repeat
    return base


def summarize_projection(p: dict) -> dict:
    """The projection's headline numbers, flat, for tables and charts."""
    pr, seq = p["projected"], p["seq"]
    return {
        "tokens_per_s": pr["tokens_per_s"],
        "tpot_ms": pr["tpot_ms"],
        "exposed_comm_per_position_ms": pr["exposed_comm_seconds"] / seq * 1e3,
        "step_seconds": pr["step_seconds"],
        "compute_seconds": pr["compute_seconds"],
        "exposed_comm_seconds": pr["exposed_comm_seconds"],
        "comm_seconds": pr["comm_seconds"],
        "mfu": pr["mfu"],
        "memory_gb": p["memory_bytes_per_device"] / 1e9,
        "fits": p["fits"],
        "nvlink_bytes": p["comm_bytes_per_device"]["nvlink"],
        "ib_bytes": p["comm_bytes_per_device"]["ib"],
        "batch_chunks": p["batch_chunks"],
        "tokens_per_step": p["tokens_per_step"],
        "flops_per_device": p["flops_per_device"],
        "flops_note": p["flops_note"],
    }


def _decode_summary(d: dict) -> dict:
    """A compiled decode step's numbers, beside the paper's TPOT."""
    return {"tpot_ms": d["projected"]["tpot_ms"],
            "hbm_floor_ms": d["projected"]["hbm_floor_seconds"] * 1e3,
            "hbm_bound": d["projected"]["hbm_bound"],
            "comm_ms": d["projected"]["comm_seconds"] * 1e3,
            "tokens_per_s": d["projected"]["tokens_per_s"],
            "memory_gb": d["memory_bytes_per_device"] / 1e9, "fits": d["fits"],
            "context": d["context"], "batch": d["batch"]}


def _project_row(label: str, layout: Layout, cfg: ModelConfig, hw: Any,
                 stage: Callable[[str], None], train: bool) -> dict:
    """A row's forward projection and, with `train`, its training and decode steps; a failed
    projection is recorded as its error."""
    from helix_jax.analysis.costmodel.pipelined import as_megatron
    from helix_jax.analysis.costmodel.project import project

    out: dict[str, Any] = {}
    stage(f"{label}: projecting")
    try:
        start = time.perf_counter()
        full = project(cfg, layout, hw).to_dict()  # with the fewest batch chunks that fit
        full["analysis_seconds"] = time.perf_counter() - start
        out["projection"] = summarize_projection(full)
        out["projection_detail"] = full
    except (ValueError, RuntimeError) as e:
        out["projection"], out["projection_error"] = None, str(e)
    if not train:
        return out
    stage(f"{label}: projecting a training step")
    try:
        # the paper's baseline is Megatron's pipeline: priced by its schedule (composed), not
        # as helix's runtime would run it compiled whole
        t = project(cfg, layout, hw, mode="train",
                    composed=as_megatron(layout)).to_dict()
        out["projection_train"] = {**summarize_projection(t), "fits_why": t.get("fits_why"),
                                   "compiled": t["compiled"],
                                   "extended_by_formula": t["extended_by_formula"]}
    except (ValueError, RuntimeError) as e:
        out["projection_train"], out["projection_train_error"] = None, str(e)
    # the paper's TPOT as a real decode step: batch B, a cache of `seq` positions
    stage(f"{label}: projecting a decode step")
    try:
        out["projection_decode"] = _decode_summary(project(cfg, layout, hw, mode="decode").to_dict())
    except (ValueError, RuntimeError) as e:
        out["projection_decode"], out["projection_decode_error"] = None, str(e)
    return out


def _measure_row(small: ModelConfig, layout: Layout, *, warmup: int, repeat: int, trim: float,
                 max_host_gb: float, params_cache: dict) -> dict:
    """The small model timed on the local mesh, or why it was not."""
    from helix_jax.layouts import parse_layout
    from helix_jax.report import bench

    try:
        if small not in params_cache:  # parameters do not depend on the layout: once per model
            from helix_jax.model import Sharded

            params_cache[small] = Sharded.build(small, parse_layout("single")).init(0)  # 1 device
        return {"measured": bench.measure(small, layout, warmup=warmup, repeat=repeat, trim=trim,
                                          params=params_cache[small],
                                          max_host_bytes=max_host_gb * 1e9)}
    except bench.HostMemoryError as e:
        return {"measure_skipped": f"{e}. The projection row still stands."}
    except (ValueError, RuntimeError) as e:
        return {"measure_skipped": f"failed: {e}"}


def run_row(table: TableSpec, row: RowSpec, hw: Any, *, measure: bool, warmup: int, repeat: int,
            trim: float, max_host_gb: float, project_overrides: dict | None = None,
            measure_overrides: dict | None = None, stage: Callable[[str], None] = lambda s: None,
            params_cache: dict | None = None, train: bool = True) -> dict:
    """Projection (forward and, with `train`, a training and a decode step) and measurement of
    one row; errors are recorded, not raised."""
    from helix_jax.config import resolve_model
    from helix_jax.layouts import parse_layout
    from helix_jax.report import paper

    layout = parse_layout(row.layout)
    claim = paper.claim(table.name, row.layout)
    out: dict[str, Any] = {"row": row.layout, "layout": layout.spec, "role": row.role,
                           "mesh": layout.axis_sizes,
                           "claim": None if claim is None else {
                               "tokens_per_s": claim.tokens_per_s, "tpot_ms": claim.tpot_ms,
                               "method": claim.method, "sources": list(claim.sources),
                               **paper.check_claim(claim, hw)}}
    cfg = resolve_model(table.model, **(project_overrides or {}))
    out.update(_project_row(f"{table.name} {row.layout}", layout, cfg, hw, stage, train))
    out["measured"] = None
    if not measure:
        out["measure_skipped"] = "measurement turned off"
        return out
    small = resolve_model(table.measured_model, **(measure_overrides or {}))
    stage(f"{table.name} {row.layout}: measuring {small.name}")
    out.update(_measure_row(small, layout, warmup=warmup, repeat=repeat, trim=trim,
                            max_host_gb=max_host_gb,
                            params_cache={} if params_cache is None else params_cache))
    return out


# ----------------------------------------------------------------------------- the report


def _jobs(tables: Sequence[str], rows: Sequence[str] | None) -> list[tuple[TableSpec, RowSpec]]:
    """The (table, row) pairs to run: every row of `tables`, or those whose spec is in `rows`;
    an unknown table or no row left is an error, and so is a jax with fewer than 16 devices."""
    import jax

    unknown = [t for t in tables if t not in TABLES]
    if unknown:
        raise ValueError(f"unknown table(s) {unknown}; choose from {list(TABLES)}")
    if len(jax.devices()) < DEVICES and len(jax.devices("cpu")) < DEVICES:
        raise RuntimeError(f"the tables need {DEVICES} devices; jax has {len(jax.devices())}. "
                           f"Call helix_jax.devices.ensure_host_devices({DEVICES}) before jax "
                           f"starts (the `helix` command does).")
    jobs = [(TABLES[t], r) for t in tables for r in TABLES[t].rows
            if rows is None or r.layout in rows]
    if not jobs:
        raise ValueError(f"no rows left: rows={list(rows or [])} matches none of "
                         f"{[r.layout for t in tables for r in TABLES[t].rows]}")
    return jobs


def _run_jobs(jobs: list[tuple[TableSpec, RowSpec]], tables: Sequence[str], hw: Any,
              progress: bool, **row_options: Any) -> dict[str, dict]:
    """Every job's row, under a progress bar, grouped by table."""
    from tqdm.auto import tqdm

    results: dict[str, dict] = {t: {"name": t, "title": TABLES[t].title, "model": TABLES[t].model,
                                     "measured_model": TABLES[t].measured_model, "rows": []}
                                for t in tables}
    bar = tqdm(jobs, desc="reproduce", unit="row", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    params_cache: dict = {}
    for table, row in bar:
        results[table.name]["rows"].append(run_row(
            table, row, hw, stage=lambda s: bar.set_postfix_str(s, refresh=True),
            params_cache=params_cache, **row_options))
    bar.close()
    return results


def _meta(command: str, name: str, hardware: str, quick: bool, measure: bool,
          cfg_measure: dict, trim: float, project_overrides: dict | None,
          measure_overrides: dict | None) -> dict:
    """The report's `meta`: what ran it, with which settings, on what machine."""
    import jax

    return {"command": command, "name": name,
            "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "quick": quick, "hardware": hardware, "measure": measure, **cfg_measure, "trim": trim,
            "jax": jax.__version__, "python": platform.python_version(),
            "platform": jax.devices()[0].platform, "devices": len(jax.devices()),
            "cpu_cores": os.cpu_count(), "project_overrides": project_overrides or {},
            "measure_overrides": measure_overrides or {}}


def run_reproduce(out_dir: str | Path = "results", quick: bool = False,
                  hardware: str = "h100-paper", progress: bool = True, *,
                  tables: Sequence[str] = ("dense", "moe"), rows: Sequence[str] | None = None,
                  measure: bool = True, warmup: int | None = None, repeat: int | None = None,
                  trim: float = 0.1, charts: bool = True, name: str = "reproduce",
                  max_host_gb: float = 8.0, project_overrides: dict | None = None,
                  measure_overrides: dict | None = None, command: str | None = None,
                  train: bool = True) -> dict:
    """Build the report: every row of `tables` (restricted to layout specs in `rows` if given),
    projected on `hardware` and measured on the local mesh; write JSON, Markdown and PNGs into
    `out_dir` as `<name>.*`; return the report as a dict.

    `quick` times fewer runs (warm-up 1, 2 timed) but keeps every row. `project_overrides` and
    `measure_overrides` change the projected and measured model configs (tests use them to shrink
    the work); with `project_overrides` the paper comparisons no longer describe the paper's shapes.
    `command` is what the report says generated it (default: the `helix reproduce` line).
    """
    from helix_jax.devices import ensure_host_devices

    ensure_host_devices(DEVICES)
    from helix_jax.analysis import load_hardware
    from helix_jax.config import resolve_model
    from helix_jax.report import paper
    from helix_jax.report.provenance import generated_by
    from helix_jax.report.render import statements

    started = time.perf_counter()
    hw = load_hardware(hardware)
    cfg_measure = settings(quick, warmup, repeat)
    jobs = _jobs(tables, rows)
    results = _run_jobs(jobs, tables, hw, progress, measure=measure, trim=trim,
                        max_host_gb=max_host_gb, project_overrides=project_overrides,
                        measure_overrides=measure_overrides, train=train, **cfg_measure)
    command = command or "helix reproduce" + (" --quick" if quick else "")
    report = {
        "generated_by": generated_by(command),
        "meta": _meta(command, name, hardware, quick, measure, cfg_measure, trim,
                      project_overrides, measure_overrides),
        "hardware": _hardware_dict(hw),
        "paper": {"claims": paper.claims_as_dicts(), "tpot_definition": paper.TPOT_DEFINITION,
                  "moe_report": paper.MOE_REPORT},
        "limits": {t: paper.limits(resolve_model(TABLES[t].model), hw) for t in tables},
        "tables": results,
    }
    # the checks of the paper's figures, as `python -m helix_jax.report.render` recomputes them
    report["cannot_hold"] = statements(report)
    return _write(report, Path(out_dir), name, charts, started)


def _write(report: dict, out: Path, name: str, charts: bool, started: float) -> dict:
    """Write `<name>.json`, `<name>.md` and (with `charts`) the PNGs into `out`."""
    from helix_jax.report.reproduce import markdown, write_charts

    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{name}.json", out / f"{name}.md"]
    if charts:
        written += write_charts(report, out, name)
    report["meta"]["elapsed_s"] = time.perf_counter() - started
    report["files"] = [f.name for f in written]
    (out / f"{name}.md").write_text(markdown(report))
    (out / f"{name}.json").write_text(json.dumps(_jsonable(report), indent=1) + "\n")
    return report


def _hardware_dict(hw: Any) -> dict:
    import dataclasses

    return dataclasses.asdict(hw)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if hasattr(x, "item"):
        return x.item()
    return str(x)
