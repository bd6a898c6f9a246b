"""`helix reproduce`: both of the paper's tables, checked three ways, written as a report.

For each row (a layout of the dense or the MoE model) the report puts side by side:
  paper      the paper's claimed tokens/s and TPOT, where it made a claim (`helix_jax.report.paper`);
  projection the full-size model (paper-dense / paper-moe) compiled for the layout on 16 fake
             devices, its FLOPs, memory and collectives read off the program and priced on a
             hardware profile (`analysis.project`; default h100-paper, the paper's cluster);
  measured   the small model (small-dense / small-moe) run on the local mesh, timed the paper's
             way: warm-up runs, then timed runs with block_until_ready, median and trimmed mean
             (`helix_jax.report.bench`). On 16 fake CPU devices sharing a few cores this shows that the
             program runs; it ranks nothing about GPUs.
and then computes where the paper's figures cannot hold (`paper.cannot_hold`).

Writes <out>/<name>.json, <name>.md and three PNG charts (<name>_tokens.png, <name>_comm.png,
<name>_step.png); `name` is "reproduce" for the command. `experiments/dense_table.py` and
`moe_table.py` run one table each through the same code.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helix_jax.report.answer import answer_lines
from helix_jax.report.fmt import gb, gb_label, num
from helix_jax.report.provenance import generated_by, markdown_header
from helix_jax.report.ranking import fastest_that_fits
from helix_jax.report.wording import priced_only_footnote, priced_only_mark, rendered_note

DEVICES = 16


@dataclass(frozen=True)
class RowSpec:
    layout: str
    role: str


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    model: str  # projected at full size
    measured_model: str  # run on the local mesh
    rows: tuple[RowSpec, ...]


TABLES: dict[str, TableSpec] = {
    "dense": TableSpec(
        "dense", "Dense transformer: TP=8 x PP=2 against Helix m=4 x n=4", "paper-dense",
        "small-dense", (
            RowSpec("tp-pp", "paper's baseline: Megatron TP=8 x GPipe PP=2"),
            RowSpec("helix", "paper's method: heads 4 x head dim 4, score all-reduce (score_psum)"),
            RowSpec("helix:core=seq_a2a", "extra: same weights, query-sequence all-to-all core"),
            RowSpec("helix:core=qk_gather", "extra: same weights, q/k all-gather core"),
            RowSpec("dp", "extra: data parallel, weights replicated"),
            RowSpec("kvp", "extra: KV-sequence parallel, the sequence (and KV cache) split 16 ways"),
        )),
    "moe": TableSpec(
        "moe", "MoE transformer: TP=8 x PP=2 against expert parallelism EP=16", "paper-moe",
        "small-moe", (
            RowSpec("tp-pp", "paper's baseline: Megatron TP=8 x GPipe PP=2"),
            RowSpec("ep", "paper's method: one expert per GPU, all-to-all dispatch and combine"),
            RowSpec("ep:chunks=4", "extra: EP=16 with the capacity buffer in 4 overlapped chunks"),
            RowSpec("helix-ep", "extra: helix attention, experts one per device, tokens replicated"),
            RowSpec("dp", "extra: data parallel, all experts replicated"),
            RowSpec("kvp", "extra: KV-sequence parallel, experts one per device"),
        )),
}

CPU_CAVEAT = ("CPU timings rank nothing about GPUs: the 16 \"devices\" are fake CPU devices "
              "sharing this machine's {cores} core(s), so collectives are memory copies and every "
              "layout competes for the same cores. They show that each layout's program compiles, "
              "runs and gives finite output; the projection columns are the performance numbers.")


def settings(quick: bool, warmup: int | None = None, repeat: int | None = None) -> dict:
    """Measurement settings: the paper warms up, times many batches and trims the extremes."""
    base = {"warmup": 1, "repeat": 2} if quick else {"warmup": 2, "repeat": 5}
    if warmup is not None:
        base["warmup"] = warmup
    if repeat is not None:
        base["repeat"] = repeat
    return base


# ----------------------------------------------------------------------------- running rows

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


def run_row(table: TableSpec, row: RowSpec, hw, *, measure: bool, warmup: int, repeat: int,
            trim: float, max_host_gb: float, project_overrides: dict | None = None,
            measure_overrides: dict | None = None, stage=lambda s: None,
            params_cache: dict | None = None, train: bool = True) -> dict:
    """Projection (forward and, with `train`, a training step) and measurement of one row;
    errors are recorded, not raised."""
    from helix_jax.analysis.costmodel.project import project
    from helix_jax.config import resolve_model
    from helix_jax.layouts import parse_layout
    from helix_jax.report import bench, paper

    layout = parse_layout(row.layout)
    claim = paper.claim(table.name, row.layout)
    out: dict[str, Any] = {"row": row.layout, "layout": layout.spec, "role": row.role,
                           "mesh": layout.axis_sizes,
                           "claim": None if claim is None else {
                               "tokens_per_s": claim.tokens_per_s, "tpot_ms": claim.tpot_ms,
                               "method": claim.method, "sources": list(claim.sources),
                               **paper.check_claim(claim, hw)}}
    stage(f"{table.name} {row.layout}: projecting")
    cfg = resolve_model(table.model, **(project_overrides or {}))
    try:
        start = time.perf_counter()
        full = project(cfg, layout, hw).to_dict()  # with the fewest batch chunks that fit
        full["analysis_seconds"] = time.perf_counter() - start
        out["projection"] = summarize_projection(full)
        out["projection_detail"] = full
    except (ValueError, RuntimeError) as e:
        out["projection"], out["projection_error"] = None, str(e)
    if train:
        stage(f"{table.name} {row.layout}: projecting a training step")
        try:
            t = project(cfg, layout, hw, mode="train").to_dict()
            out["projection_train"] = {**summarize_projection(t), "fits_why": t.get("fits_why"),
                                       "compiled": t["compiled"],
                                       "extended_by_formula": t["extended_by_formula"]}
        except (ValueError, RuntimeError) as e:
            out["projection_train"], out["projection_train_error"] = None, str(e)

    if train:  # the paper's TPOT as a real decode step: batch B, a cache of `seq` positions
        stage(f"{table.name} {row.layout}: projecting a decode step")
        try:
            d = project(cfg, layout, hw, mode="decode").to_dict()
            out["projection_decode"] = {
                "tpot_ms": d["projected"]["tpot_ms"],
                "hbm_floor_ms": d["projected"]["hbm_floor_seconds"] * 1e3,
                "hbm_bound": d["projected"]["hbm_bound"],
                "comm_ms": d["projected"]["comm_seconds"] * 1e3,
                "tokens_per_s": d["projected"]["tokens_per_s"],
                "memory_gb": d["memory_bytes_per_device"] / 1e9, "fits": d["fits"],
                "context": d["context"], "batch": d["batch"]}
        except (ValueError, RuntimeError) as e:
            out["projection_decode"], out["projection_decode_error"] = None, str(e)

    out["measured"] = None
    if not measure:
        out["measure_skipped"] = "measurement turned off"
        return out
    small = resolve_model(table.measured_model, **(measure_overrides or {}))
    stage(f"{table.name} {row.layout}: measuring {small.name}")
    cache = {} if params_cache is None else params_cache
    try:
        if small not in cache:  # parameters do not depend on the layout: initialise once per model
            from helix_jax.model import Sharded

            cache[small] = Sharded.build(small, parse_layout("single")).init(0)  # one device
        out["measured"] = bench.measure(small, layout, warmup=warmup, repeat=repeat, trim=trim,
                                        params=cache[small], max_host_bytes=max_host_gb * 1e9)
    except bench.HostMemoryError as e:
        out["measure_skipped"] = f"{e}. The projection row still stands."
    except (ValueError, RuntimeError) as e:
        out["measure_skipped"] = f"failed: {e}"
    return out


# ----------------------------------------------------------------------------- the run

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
    import jax
    from tqdm.auto import tqdm

    from helix_jax.analysis import load_hardware
    from helix_jax.report import paper

    started = time.perf_counter()
    hw = load_hardware(hardware)
    unknown = [t for t in tables if t not in TABLES]
    if unknown:
        raise ValueError(f"unknown table(s) {unknown}; choose from {list(TABLES)}")
    if len(jax.devices()) < DEVICES and len(jax.devices("cpu")) < DEVICES:
        raise RuntimeError(f"the tables need {DEVICES} devices; jax has {len(jax.devices())}. "
                           f"Call helix_jax.devices.ensure_host_devices({DEVICES}) before jax "
                           f"starts (the `helix` command does).")
    cfg_measure = settings(quick, warmup, repeat)
    jobs = [(TABLES[t], r) for t in tables for r in TABLES[t].rows
            if rows is None or r.layout in rows]
    if not jobs:
        raise ValueError(f"no rows left: rows={list(rows or [])} matches none of "
                         f"{[r.layout for t in tables for r in TABLES[t].rows]}")

    results: dict[str, dict] = {t: {"name": t, "title": TABLES[t].title, "model": TABLES[t].model,
                                     "measured_model": TABLES[t].measured_model, "rows": []}
                                for t in tables}
    bar = tqdm(jobs, desc="reproduce", unit="row", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    params_cache: dict = {}
    for table, row in bar:
        results[table.name]["rows"].append(run_row(
            table, row, hw, measure=measure, trim=trim, max_host_gb=max_host_gb,
            project_overrides=project_overrides, measure_overrides=measure_overrides,
            stage=lambda s: bar.set_postfix_str(s, refresh=True), params_cache=params_cache,
            train=train, **cfg_measure))
    bar.close()

    projections = {(t, r["row"]): r["projection_detail"] for t, res in results.items()
                   for r in res["rows"] if r.get("projection_detail")}
    if project_overrides:  # the paper's claims are about the paper's shapes only
        statements = paper.claim_statements(hw)
    else:
        statements = paper.cannot_hold(hw, projections)
    statements = [s for s in statements if set(s["tables"]) & set(tables)]
    from helix_jax.config import resolve_model

    command = command or "helix reproduce" + (" --quick" if quick else "")
    report = {
        "generated_by": generated_by(command),
        "meta": {
            "command": command,
            "name": name,
            "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "quick": quick,
            "hardware": hardware,
            "measure": measure,
            **cfg_measure,
            "trim": trim,
            "jax": jax.__version__,
            "python": platform.python_version(),
            "platform": jax.devices()[0].platform,
            "devices": len(jax.devices()),
            "cpu_cores": os.cpu_count(),
            "project_overrides": project_overrides or {},
            "measure_overrides": measure_overrides or {},
        },
        "hardware": _hardware_dict(hw),
        "paper": {"claims": paper.claims_as_dicts(), "tpot_definition": paper.TPOT_DEFINITION,
                  "moe_report": paper.MOE_REPORT},
        "limits": {t: paper.limits(resolve_model(TABLES[t].model), hw) for t in tables},
        "tables": results,
        "cannot_hold": statements,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / f"{name}.json", out / f"{name}.md"]
    if charts:
        files += write_charts(report, out, name)
    report["meta"]["elapsed_s"] = time.perf_counter() - started
    report["files"] = [f.name for f in files]
    (out / f"{name}.md").write_text(markdown(report))
    (out / f"{name}.json").write_text(json.dumps(_jsonable(report), indent=1) + "\n")
    return report


def _hardware_dict(hw) -> dict:
    import dataclasses

    return dataclasses.asdict(hw)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if hasattr(x, "item"):
        return x.item()
    return str(x)


# ----------------------------------------------------------------------------- charts

def _proj(row: dict, key: str):
    p = row.get("projection")
    return None if p is None else p[key]


def write_charts(report: dict, out: Path, name: str) -> list[Path]:
    """The three charts: tokens/s, communication bytes, step time split."""
    from helix_jax.report.plots import BarPanel, bar_chart

    tables = list(report["tables"].values())
    hw = report["meta"]["hardware"]

    capacity = gb(report["hardware"]["hbm_capacity_bytes"], 0)

    def label(r):
        p = r.get("projection")
        return r["row"] + (f"\n(does not fit\nin {capacity})" if p and not p["fits"] else "")

    cores = report["meta"]["cpu_cores"]
    panels = []
    for t in tables:
        cats = [label(r) for r in t["rows"]]
        panels.append(BarPanel(
            f"{t['model']} on {hw}: paper claim vs projection", cats,
            {"paper claim": [r["claim"]["tokens_per_s"] if r["claim"] else None for r in t["rows"]],
             "projection (compiled program, priced)": [_proj(r, "tokens_per_s") for r in t["rows"]]},
            "tokens/s (forward, log scale)", log=True,
            note="n/a: the paper made no claim for this layout"))
    for t in tables:
        cats = [r["row"] for r in t["rows"]]
        meas = [r["measured"] for r in t["rows"]]
        panels.append(BarPanel(
            f"{t['measured_model']} measured on {DEVICES} fake CPU devices", cats,
            {"median": [m["tokens_per_s_median"] if m else None for m in meas],
             "trimmed mean": [m["tokens_per_s_trimmed_mean"] if m else None for m in meas]},
            "forward tokens/s on this CPU", note=f"{DEVICES} fake devices share {cores} CPU core(s):\n"
            "shows the program runs; ranks nothing about GPUs", missing="not measured"))
    files = [bar_chart(out / f"{name}_tokens.png", panels,
                       "Throughput per layout: the paper's claims, our projections, CPU runs",
                       ncols=len(tables))]

    panels = []
    for t in tables:
        cats = [label(r) for r in t["rows"]]
        panels.append(BarPanel(
            f"{t['model']}: communication per device per forward step", cats,
            {"NVLink (inside a node)": [_gb(_proj(r, "nvlink_bytes")) for r in t["rows"]],
             "InfiniBand (across nodes)": [_gb(_proj(r, "ib_bytes")) for r in t["rows"]]},
            "GB per device (payload x executions)", stacked=True, fmt=gb_label,
            note="read off the compiled HLO; 4 nodes x 4 GPUs"))
    files.append(bar_chart(out / f"{name}_comm.png", panels,
                           "Communication bytes per layout, split by link", ncols=len(tables)))

    panels = []
    for t in tables:
        cats = [label(r) for r in t["rows"]]
        panels.append(BarPanel(
            f"{t['model']} on {hw}: projected step time", cats,
            {"compute": [_proj(r, "compute_seconds") for r in t["rows"]],
             "exposed communication": [_proj(r, "exposed_comm_seconds") for r in t["rows"]]},
            "seconds per forward step (1024 x 10000 tokens)", stacked=True,
            markers={"step implied by the paper's claim": [
                r["claim"]["implied_step_s"] if r["claim"] else None for r in t["rows"]]},
            note="bold: projected step; diamonds: tokens / claimed tokens/s"))
    files.append(bar_chart(out / f"{name}_step.png", panels,
                           "Step time: compute and exposed communication", ncols=len(tables)))
    return files


def _gb(x):
    return None if x is None else x / 1e9


# ----------------------------------------------------------------------------- markdown

def headline(report: dict) -> list[str]:
    """The report's summary in a few computed sentences."""
    out = []
    capacity = gb(report["hardware"]["hbm_capacity_bytes"], 0)
    for t in report["tables"].values():
        parts = []
        for r in t["rows"]:
            p, c = r.get("projection"), r["claim"]
            if c and p:
                parts.append(f"`{r['row']}` claimed {num(c['tokens_per_s'])} tokens/s, "
                             f"projected {num(p['tokens_per_s'])}{priced_only_mark(r['layout'])} "
                             f"forward tokens/s (claim = "
                             f"{c['tokens_per_s'] / p['tokens_per_s']:.2f}x projection)")
        best = fastest_that_fits(t["rows"])
        text = f"{t['model']}: " + "; ".join(parts)
        if best is not None:
            text += (f". Fastest projected layout that fits {capacity}: `{best['row']}` at "
                     f"{num(best['projection']['tokens_per_s'])}"
                     f"{priced_only_mark(best['layout'])} forward tokens/s "
                     f"(MFU {best['projection']['mfu']:.0%})")
        out.append(text + ".")
    verdicts: dict[str, int] = {}
    for s in report["cannot_hold"]:
        verdicts[s["verdict"]] = verdicts.get(s["verdict"], 0) + 1
    out.append("Checks of the paper's figures: " + ", ".join(f"{n} {v}" for v, n in verdicts.items())
               + ".")
    return out


def markdown(report: dict) -> str:
    """The report as Markdown: the answer first, then how to read it, the tables, the checks."""
    meta, hw = report["meta"], report["hardware"]
    lines = [
        f"# Reproducing the paper's tables ({meta['name']})",
        "",
        markdown_header(report["generated_by"]),
        "",
        *([rendered_note(report["rendered_by"], f"{meta['name']}.json"), ""]
          if report.get("rendered_by") else []),
        *answer_lines(report),
        (f"Written by `{meta['command']}` on {meta['created_utc']} in "
        f"{meta.get('elapsed_s', 0):.0f} s (jax {meta['jax']}, {meta['devices']} "
        f"{meta['platform']} devices, {meta['cpu_cores']} CPU cores). Hardware profile for the "
        f"projections: **{hw['name']}**: {hw['notes']}"),
        "",
        "## Summary", "",
        *[f"- {line}" for line in headline(report)],
        "",
        "## How to read the tables", "",
        "Three numbers per layout:",
        "",
        "- **paper**: the claimed tokens/s and TPOT (sources: "
        + ", ".join(sorted({s for c in report["paper"]["claims"] for s in c["sources"]})) + ").",
        (f"- **projection**: the full-size model compiled for the layout on {DEVICES} fake devices "
        "(nothing allocated); FLOPs, memory and every collective read off the compiled program, "
        f"collectives attributed to NVLink or InfiniBand from their device groups on 4 nodes x "
        f"{hw['gpus_per_node']} GPUs, and priced: compute at {hw['flops_per_s'] / 1e12:.0f} "
        f"TFLOP/s achieved, collectives by ring formulas at {hw['nvlink_bytes_per_s'] / 1e9:.0f} "
        f"GB/s NVLink and {hw['ib_bytes_per_s'] / 1e9:.0f} GB/s InfiniBand per GPU per direction, "
        "exposed unless a layout overlaps them (`ep:chunks=K` hides (K-1)/K of its all-to-alls "
        "behind expert compute). The fewest batch chunks whose program fits "
        f"{hw['hbm_capacity_bytes'] / 1e9:.0f} GB per device are used."),
        f"- **measured**: the small model run on the local mesh: {meta['warmup']} warm-up run(s), "
        f"then {meta['repeat']} timed run(s) each ended by `jax.block_until_ready`; median and "
        f"mean with {meta['trim']:.0%} trimmed from each end. "
        + CPU_CAVEAT.format(cores=meta["cpu_cores"]),
        "",
        "TPOT here is projected step time / sequence length (the paper's tables do not say which "
        "per-token time they mean, see below); the exposed-communication share of it is given "
        "beside it, closer to the paper's own definition (\"" + report["paper"]["tpot_definition"]
        + "\").",
        "",
    ]
    for t in report["tables"].values():
        lines += _table_md(t, report)
        lines += _train_md(t, report)
        lines += _decode_md(t, report)
    lines += ["## Where the paper's figures cannot hold", "",
              ("Each statement is computed by `helix_jax/report/paper.py` from the claims, the model shapes, "
              "the hardware profile and (where marked) the compiled programs; the numbers are in "
              f"`{meta['name']}.json` under `cannot_hold`."), ""]
    for i, s in enumerate(report["cannot_hold"], 1):
        lines.append(f"{i}. **{s['verdict']}** — *{s['title']}.* {s['text']}")
    lines += ["", "## Physical limits (docs/cost-model.md)", "",
              ("| model | forward GFLOP/token (non-causal / causal) | peak forward tokens/s on 16 GPUs "
              "(non-causal / causal) | KV cache for one decode step | decode step at least | "
              "decode tokens/s at most |"), "|---|---|---|---|---|---|"]
    for lim in report["limits"].values():
        lines.append(
            f"| {lim['model']} | {lim['flops_per_token'] / 1e9:.3g} / "
            f"{lim['flops_per_token_causal'] / 1e9:.3g} | {num(lim['peak_tokens_per_s'])} / "
            f"{num(lim['peak_tokens_per_s_causal'])} | {lim['kv_cache_bytes'] / 1e9:,.0f} GB | "
            f"{lim['decode_step_min_s'] * 1e3:.3g} ms | {num(lim['decode_tokens_per_s_max'])} |")
    charts = [f for f in report.get("files", []) if f.endswith(".png")]
    if charts:
        lines += ["", "## Charts", ""] + [f"![{f}]({f})" for f in charts]
    return "\n".join(lines) + "\n"


def _decode_md(t: dict, report: dict) -> list[str]:
    """The paper's TPOT against a compiled decode step, and against the step / seq reading."""
    rows = [r for r in t["rows"] if "projection_decode" in r]
    if not rows:
        return []
    cap = gb(report["hardware"]["hbm_capacity_bytes"], 0)
    first = next((r["projection_decode"] for r in rows if r["projection_decode"]), None)
    shape = (f"batch {first['batch']}, a KV cache of {first['context']:,} positions"
             if first else "")
    lines = [f"Time per output token of **{t['model']}**: the paper's TPOT beside two readings of "
             f"ours. *Decode* is one compiled decode step ({shape}: `helix project --mode decode`),"
             " never faster than reading the weights and the cache from HBM; *step / seq* is the "
             "forward projection divided by the sequence length, the only reading a forward "
             "measurement allows.", "",
             f"| layout | paper TPOT ms | decode TPOT ms | decode tokens/s | HBM floor ms | "
             f"decode comm ms | step / seq ms | memory GB/device (fits {cap}) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d, c, f = r["projection_decode"], r["claim"], r.get("projection")
        if d is None:
            lines.append(f"| `{r['row']}` | {num(c and c['tpot_ms'])} | failed: "
                         f"{r.get('projection_decode_error', '')} | | | | | |")
            continue
        mark = priced_only_mark(r["layout"])
        lines.append(f"| `{r['row']}` | {num(c and c['tpot_ms'])} | {d['tpot_ms']:.3g}{mark}"
                     f"{' (HBM-bound)' if d['hbm_bound'] else ''} | {num(d['tokens_per_s'])}{mark} "
                     f"| {d['hbm_floor_ms']:.3g} | {d['comm_ms']:.3g} | {num(f and f['tpot_ms'])} | "
                     f"{d['memory_gb']:.1f} ({num(d['fits'])}) |")
    return lines + priced_only_footnote(r["layout"] for r in rows) + [""]


def _train_md(t: dict, report: dict) -> list[str]:
    """The same layouts projected for a whole training step (forward beside it)."""
    rows = [r for r in t["rows"] if "projection_train" in r]
    if not rows:
        return []
    cap = gb(report["hardware"]["hbm_capacity_bytes"], 0)
    lines = [f"Training step of **{t['model']}** (`helix project --mode train`: forward, backward, "
             "gradient reduction, AdamW; no recompute), beside the forward pass:", "",
             f"| layout | forward tokens/s | training tokens/s | training step s | training MFU "
             f"| train / forward FLOPs | memory GB/device (fits {cap}) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        p, f = r["projection_train"], r.get("projection")
        if p is None:
            lines.append(f"| `{r['row']}` | {num(f and f['tokens_per_s'])} | failed: "
                         f"{r.get('projection_train_error', '')} | | | | |")
            continue
        ratio = p["flops_per_device"] / f["flops_per_device"] if f else None
        mark = priced_only_mark(r["layout"])
        lines.append(f"| `{r['row']}` | {num(f and f['tokens_per_s'])}{mark} | "
                     f"{num(p['tokens_per_s'])}{mark} | {p['step_seconds']:.3g}{mark} | "
                     f"{p['mfu']:.1%} | {num(ratio)} | {p['memory_gb']:.1f} ({num(p['fits'])}) |")
    lines += priced_only_footnote(r["layout"] for r in rows)
    why = [f"`{r['row']}`: {r['projection_train']['fits_why']}" for r in rows
           if r["projection_train"] and not r["projection_train"]["fits"]]
    if why:
        lines += ["", "Why a training step does not fit: " + "; ".join(why) + "."]
    return lines + [""]


def _table_md(t: dict, report: dict) -> list[str]:
    """A table's forward projections beside the paper's claims, then its CPU measurements."""
    lim = report["limits"].get(t["name"], {})
    lines = [f"## {t['title']}", "",
             (f"Projected model **{t['model']}**; measured model **{t['measured_model']}**. "
             f"Forward peak on 16 GPUs: {num(lim.get('peak_tokens_per_s'))} tokens/s."), "",
             ("| layout | paper claims tokens/s | paper TPOT ms | projected forward tokens/s "
             "| claim / projection "
             "| TPOT ms (step/seq) | exposed comm / seq ms | step s = compute + exposed comm | MFU "
             f"| memory GB/device (fits {gb(report['hardware']['hbm_capacity_bytes'], 0)}) | NVLink GB "
             "| InfiniBand GB | batch chunks |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in t["rows"]:
        c, p = r["claim"], r.get("projection")
        if p is None:
            lines.append(f"| `{r['row']}` | {num(c and c['tokens_per_s'])} | "
                         f"{num(c and c['tpot_ms'])} | projection failed: "
                         f"{r.get('projection_error', '')} |" + " |" * 9)
            continue
        ratio = c["tokens_per_s"] / p["tokens_per_s"] if c else None
        lines.append(
            f"| `{r['row']}` | {num(c and c['tokens_per_s'])} | {num(c and c['tpot_ms'])} | "
            f"{num(p['tokens_per_s'])}{priced_only_mark(r['layout'])} | "
            f"{num(ratio)}{'x' if ratio else ''} | {p['tpot_ms']:.3g} | "
            f"{p['exposed_comm_per_position_ms']:.3g} | {p['step_seconds']:.3g} = "
            f"{p['compute_seconds']:.3g} + {p['exposed_comm_seconds']:.3g} | {p['mfu']:.1%} | "
            f"{p['memory_gb']:.1f} ({num(p['fits'])}) | {p['nvlink_bytes'] / 1e9:,.0f} | "
            f"{p['ib_bytes'] / 1e9:,.0f} | {p['batch_chunks']} |")
    lines += priced_only_footnote(r["layout"] for r in t["rows"])
    lines += ["", "Rows: " + "; ".join(f"`{r['row']}` (`{r['layout']}`): {r['role']}"
                                       for r in t["rows"]) + ".",
              ""]
    notes = {r["projection"]["flops_note"] for r in t["rows"] if r.get("projection")}
    if any(n != "exact" for n in notes):
        lines += [("FLOPs note: where the attention core skips fully masked causal blocks at run "
                  "time, the compiled program's FLOPs count them (an upper bound on compute)."), ""]
    lines += [(f"Measured on this machine ({t['measured_model']}, {DEVICES} fake CPU devices; "
              "ranks nothing about GPUs):"), "",
              ("| layout | forward tokens/s median | forward tokens/s trimmed mean | runs (ms) "
              "| compile s | "
              "finite output |"), "|---|---|---|---|---|---|"]
    for r in t["rows"]:
        m = r.get("measured")
        if m is None:
            lines.append(f"| `{r['row']}` | not measured: {r.get('measure_skipped', '')} "
                         "| | | | |")
            continue
        runs = ", ".join(f"{x * 1e3:.0f}" for x in m["times_s"])
        lines.append(f"| `{r['row']}` | {num(m['tokens_per_s_median'])} | "
                     f"{num(m['tokens_per_s_trimmed_mean'])} | {runs} | {m['compile_s']:.2f} | "
                     f"{num(m['output_finite'])} |")
    return lines + [""]


# ----------------------------------------------------------------------------- CLI

def add_reproduce_args(parser: argparse.ArgumentParser) -> None:
    """Options of `helix reproduce`."""
    parser.add_argument("--out", default="results",
                        help="folder for reproduce.json, reproduce.md and the PNGs "
                        "(default: results)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer timed runs (1 warm-up, 2 timed); every row is still produced")
    parser.add_argument("--hardware", default="h100-paper",
                        help="hardware profile for the projections: a built-in name (h100-paper, "
                        "h100-sxm) or a .json/.toml file (default: h100-paper)")
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


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run the report and print where it went and its headline numbers."""
    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    report = run_reproduce(args.out, quick=args.quick, hardware=args.hardware,
                           progress=args.progress, tables=tables, measure=args.measure,
                           warmup=args.warmup, repeat=args.repeat, train=args.train)
    for t in report["tables"].values():
        print(f"{t['model']} on {report['meta']['hardware']}:")
        for r in t["rows"]:
            p, c = r.get("projection"), r["claim"]
            got = f"{p['tokens_per_s']:>12,.0f} tokens/s projected" if p else "   projection failed"
            if p and not p["fits"]:
                got += f" (needs {p['memory_gb']:.0f} GB per GPU: does not fit)"
            said = f"  (paper: {c['tokens_per_s']:,.0f})" if c else ""
            print(f"  {r['row']:<22}{got}{said}")
    for line in headline(report)[-1:]:
        print(line)
    broken = [s for s in report["cannot_hold"] if s["verdict"].startswith(("cannot", "incons"))]
    print(f"{len(broken)} of {len(report['cannot_hold'])} checks of the paper's figures fail; "
          f"see {Path(args.out) / 'reproduce.md'}")
    print(f"wrote {', '.join(str(Path(args.out) / f) for f in report['files'])} "
          f"in {report['meta']['elapsed_s']:.0f} s")
    return 0
