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

This module holds the tables' rows and renders the report: <name>.md and three PNG charts
(<name>_tokens.png, <name>_comm.png, <name>_step.png); `name` is "reproduce" for the command.
Running the projections and measurements that fill it is `helix_jax.commands.reproduce`, which
`experiments/dense_table.py` and `moe_table.py` use for one table each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from helix_jax.report.answer import answer_lines
from helix_jax.report.fmt import gb_label, num
from helix_jax.report.provenance import markdown_header
from helix_jax.report.ranking import fastest_that_fits
from helix_jax.report.wording import priced_only_footnote, priced_only_mark, rendered_note
from helix_jax.units import gb

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
