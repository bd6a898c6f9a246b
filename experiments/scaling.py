"""Scaling study: where each attention core and each layout wins, at the paper's model sizes.

Every point is the full-size model compiled for a layout on fake devices (nothing allocated), its
FLOPs, memory and collectives read off the program, priced on a hardware profile (default
h100-paper: 4 GPUs per node); see `helix_jax.analysis.costmodel.project`. Four sweeps, and one
analytic comparison:

  mxn     paper-dense on helix m x n = 1x16, 2x8, 4x4, 8x2, 16x1 (m: head-dim split, n: head
          groups), each attention core (at m = 1 the cores are one program); tp-pp and dp for scale.
  ep      paper-moe on ep:ep=E,dp=16/E for E = 1, 2, 4, 8, 16 (E=1 is data parallel with every
          expert on every device); tp-pp for scale.
  seq     paper-dense at S = 1000, 2500, 10000, 40000, 100000 with the batch cut so a step holds
          about 10.24 M tokens (B = 10240, 4096, 1024, 256, 128; the last is 12.8 M tokens, as
          10.24 M / 100000 is not a whole batch): the three cores, tp-pp and dp.
  dp      paper-dense, global batch 1024 (strong scaling) on 16, 64 and 256 devices:
          helix:m=4,n=4,dp=K (score_psum and seq_a2a), tp-pp:dp=K and dp:dp=16K.
  decode  ANALYTIC (formulas, no program: the model has no KV-cache decode path): bytes one
          decode step moves per device for each core, against reading the KV cache.

Writes results/scaling.json, results/scaling.md and results/scaling_{mxn,ep,seq,dp,decode}.png.

    python experiments/scaling.py [--out results] [--quick]
"""

from __future__ import annotations

from helix_jax.devices import ensure_host_devices

ensure_host_devices(256)  # before jax starts: the data-axis sweep reaches 256 devices

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

from helix_jax.analysis import load_hardware
from helix_jax.analysis.costmodel.formulas import DTYPE_BYTES
from helix_jax.analysis.costmodel.pricing import collective_seconds
from helix_jax.analysis.costmodel.project import project
from helix_jax.commands.reproduce import summarize_projection
from helix_jax.config import resolve_model
from helix_jax.layouts import parse_layout
from helix_jax.report.fmt import human, num
from helix_jax.report.plots import COLORS, LinePanel, line_chart
from helix_jax.report.provenance import generated_by, markdown_header
from helix_jax.report.ranking import fastest_that_fits
from helix_jax.units import gb

CORES = ("score_psum", "seq_a2a", "qk_gather")
SHAPES = ((1, 16), (2, 8), (4, 4), (8, 2), (16, 1))
EPS = (1, 2, 4, 8, 16)
SEQS = ((1000, 10240), (2500, 4096), (10000, 1024), (40000, 256), (100000, 128))
DATA = (1, 4, 16)
# One colour per core or layout in every chart.
_BASE = {"score_psum": COLORS[0], "seq_a2a": COLORS[1], "qk_gather": COLORS[2], "tp-pp": COLORS[3],
         "dp": COLORS[4]}
SERIES_COLORS = {**_BASE, **{f"helix {k}": v for k, v in _BASE.items()},
                 **{f"{k} (reference)": v for k, v in _BASE.items()}}
QUICK = {"shapes": ((2, 8), (4, 4), (16, 1)), "eps": (2, 16), "seqs": SEQS[::2], "data": (1, 4)}


# ----------------------------------------------------------------------------- points

def plan(quick: bool) -> list[dict]:
    """Every point of the four compiled sweeps: study, model, layout spec, overrides, x."""
    shapes = QUICK["shapes"] if quick else SHAPES
    eps = QUICK["eps"] if quick else EPS
    seqs = QUICK["seqs"] if quick else SEQS
    data = QUICK["data"] if quick else DATA
    pts = []
    for m, n in shapes:
        for core in CORES if m > 1 else ("score_psum",):
            pts.append({"study": "mxn", "model": "paper-dense", "layout": f"helix:m={m},n={n},core={core}",
                            "x": f"{m}x{n}", "series": core if m > 1 else "any core (m=1)"})
    for ref in ("tp-pp", "dp"):
        pts.append({"study": "mxn", "model": "paper-dense", "layout": ref, "x": "ref", "series": ref})
    for e in eps:
        pts.append({"study": "ep", "model": "paper-moe", "layout": f"ep:ep={e},dp={16 // e}", "x": e,
                        "series": "ep"})
    pts.append({"study": "ep", "model": "paper-moe", "layout": "tp-pp", "x": "ref", "series": "tp-pp"})
    for seq, batch in seqs:
        over = {"seq": seq, "batch": batch}
        for core in CORES:
            pts.append({"study": "seq", "model": "paper-dense", "layout": f"helix:core={core}", "x": seq,
                            "series": f"helix {core}", "overrides": over})
        for ref in ("tp-pp", "dp"):
            pts.append({"study": "seq", "model": "paper-dense", "layout": ref, "x": seq, "series": ref,
                            "overrides": over})
    for k in data:
        for core in ("score_psum", "seq_a2a"):
            pts.append({"study": "dp", "model": "paper-dense", "layout": f"helix:m=4,n=4,core={core},dp={k}",
                            "x": 16 * k, "series": f"helix {core}"})
        pts.append({"study": "dp", "model": "paper-dense",
                        "layout": "tp-pp" if k == 1 else f"tp-pp:dp={k}", "x": 16 * k, "series": "tp-pp"})
        pts.append({"study": "dp", "model": "paper-dense", "layout": f"dp:dp={16 * k}", "x": 16 * k,
                        "series": "dp"})
    return pts


def run_point(pt: dict, hw) -> dict:
    cfg = resolve_model(pt["model"], **pt.get("overrides", {}))
    layout = parse_layout(pt["layout"])
    out = {**pt, "spec": layout.spec, "devices": layout.devices, "batch": cfg.batch,
           "seq": cfg.seq, "projection": None}
    start = time.perf_counter()
    try:
        full = project(cfg, layout, hw).to_dict()
        out["projection"] = summarize_projection(full)
        out["projection"]["comm_bytes_by_op"] = full["comm_bytes_by_op"]
        out["projection"]["tokens_per_s_per_device"] = (full["projected"]["tokens_per_s"]
                                                        / layout.devices)
    except (ValueError, RuntimeError) as e:
        out["error"] = str(e)
    out["analysis_seconds"] = time.perf_counter() - start
    return out


# ----------------------------------------------------------------------------- decode (analytic)

def decode_analytic(hw, seqs=(1000, 2500, 10000, 40000, 100000), batch: int = 1024,
                    m: int = 4, n: int = 4) -> list[dict]:
    """One decode step (one new token for each of `batch` sequences) of paper-dense on helix m x n.

    Per device and layer, from the formulas of docs/layouts.md (no program: there is no decode path):
      KV read      this device's K and V cache slice [B, S, H/n, d/m] x 2 from HBM
      score_psum   all-reduce of the partial scores [B, H/n, 1, S] over the m head-dim shards
      qk_gather    all-gather of the K cache to the full head dim [B, S, H/n, d] over the m shards
      seq_a2a      one query cannot be split m ways: the core degenerates to gathering K and V
    The KV cache is kept as the projections produce it, split by head dim like W_k and W_v. The
    dim group (m devices) sits inside a node (NVLink), as helix places it. Common to all cores
    (left out): the output all-reduce of [B, 1, D].
    """
    cfg = resolve_model("paper-dense")
    b, L, H, d = DTYPE_BYTES[cfg.dtype], cfg.n_layers, cfg.n_heads, cfg.head_dim
    h = H // n
    bw, lat = hw.nvlink_bytes_per_s, hw.latency_nvlink_s
    rows = []
    for S in seqs:
        kv = 2 * batch * S * h * (d // m) * b
        scores = batch * h * S * b
        k_full = batch * S * h * d * b
        row = {"seq": S, "batch": batch, "kv_read_bytes": L * kv,
               "kv_read_s": L * kv / hw.hbm_bytes_per_s,
               "score_psum_bytes": L * scores,
               "score_psum_s": L * collective_seconds("all-reduce", scores, m, bw, lat),
               "qk_gather_bytes": L * k_full,
               "qk_gather_s": L * collective_seconds("all-gather", k_full, m, bw, lat),
               "seq_a2a_bytes": 2 * L * k_full,
               "seq_a2a_s": 2 * L * collective_seconds("all-gather", k_full, m, bw, lat)}
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- conclusions

def _tps(p: dict) -> float | None:
    return p["projection"]["tokens_per_s"] if p.get("projection") else None


def _fits(p: dict) -> bool:
    return bool(p.get("projection") and p["projection"]["fits"])


def _conclude_mxn(points: list[dict]) -> list[str]:
    """helix m x n: the winning core per shape, and the communication behind it."""
    mxn = [p for p in points if p["study"] == "mxn"]
    refs = {p["series"]: p for p in mxn if p["x"] == "ref"}
    lines = []
    for x in dict.fromkeys(p["x"] for p in mxn if p["x"] != "ref"):
        group = [p for p in mxn if p["x"] == x]
        best = fastest_that_fits(group)
        if best is None:
            lines.append(f"m x n = {x}: no core fits in memory.")
            continue
        worst = min((p for p in group if _tps(p)), key=_tps)
        comm = {p["series"]: (p["projection"]["nvlink_bytes"] + p["projection"]["ib_bytes"]) / 1e9
                for p in group if p.get("projection")}
        lines.append(
            f"m x n = {x}: {best['series']} wins at {num(_tps(best))} tokens/s"
            + (f", {_tps(best) / _tps(worst):.2f}x {worst['series']} ({num(_tps(worst))})"
               if worst is not best else "")
            + "; communication per device: " + ", ".join(f"{k} {v:,.0f} GB" for k, v in comm.items())
            + ".")
    helix = [p for p in mxn if p["x"] != "ref" and _fits(p)]
    if helix:
        top = max(helix, key=_tps)
        lines.append(f"Best helix point: {top['layout']} at {num(_tps(top))} tokens/s. "
                     + "; ".join(f"{k}: {num(_tps(v))} tokens/s"
                                 + ("" if _fits(v) else " (does not fit)")
                                 for k, v in refs.items() if _tps(v)) + ".")
    return lines



def _conclude_ep(points: list[dict], capacity: str) -> list[str]:
    """The EP degree sweep: throughput, memory and all-to-all bytes per degree."""
    ep = [p for p in points if p["study"] == "ep"]
    lines = []
    sweep = [p for p in ep if p["x"] != "ref"]
    for p in sweep:
        pr = p["projection"]
        if pr is None:
            lines.append(f"EP={p['x']}: {p.get('error')}")
            continue
        lines.append(f"EP={p['x']} ({p['layout']}): {num(pr['tokens_per_s'])} tokens/s, "
                     f"{pr['memory_gb']:.0f} GB per device ({'fits' if pr['fits'] else 'does not fit'} "
                     f"in {capacity}), all-to-all {pr['comm_bytes_by_op'].get('all-to-all', 0) / 1e9:,.0f}"
                     f" GB per device ({pr['nvlink_bytes'] / 1e9:,.0f} GB NVLink, "
                     f"{pr['ib_bytes'] / 1e9:,.0f} GB InfiniBand), exposed communication "
                     f"{pr['exposed_comm_seconds']:.3g} s of a {pr['step_seconds']:.3g} s step.")
    fit = [p for p in sweep if _fits(p)]
    if len(fit) >= 2:
        lo, hi = min(fit, key=lambda p: p["x"]), max(fit, key=lambda p: p["x"])
        best = fastest_that_fits(sweep)
        lines.append(
            f"Among the EP degrees that fit, throughput goes from {num(_tps(lo))} (EP={lo['x']}) to "
            f"{num(_tps(hi))} tokens/s (EP={hi['x']}): {_tps(hi) / _tps(lo):.2f}x for "
            f"{hi['x'] // lo['x']}x the EP degree, not proportional (the paper's 'TPS ∝ EP'): the "
            f"expert FLOPs per token do not change with E, only where they run. Best: EP="
            f"{best['x']}. The EP degree's real effect is memory: each device holds 16/E experts.")
    tp = next((p for p in ep if p["x"] == "ref"), None)
    best = fastest_that_fits(sweep)
    if tp and _tps(tp) and best:
        lines.append(f"tp-pp for scale: {num(_tps(tp))} tokens/s; the best EP point is "
                     f"{_tps(best) / _tps(tp):.2f}x that.")
    return lines



def _conclude_seq(points: list[dict], capacity: str) -> list[str]:
    """The sequence-length sweep: who wins per S, and what score_psum pays."""
    seq = [p for p in points if p["study"] == "seq"]
    lines = []
    for x in dict.fromkeys(p["x"] for p in seq):
        group = [p for p in seq if p["x"] == x]
        best = fastest_that_fits(group)
        cores = {p["series"]: p for p in group if p["series"].startswith("helix") and _tps(p)}
        core_best = max(cores.values(), key=_tps) if cores else None
        text = f"S = {x:,} (B = {group[0]['batch']}): "
        text += (f"{best['series']} wins overall at {num(_tps(best))} tokens/s" if best
                 else "nothing fits")
        if core_best is not None:
            sp = cores.get("helix score_psum")
            text += f"; best helix core {core_best['series'].split()[1]} ({num(_tps(core_best))})"
            if sp is not None and sp is not core_best:
                a, b = sp["projection"], core_best["projection"]
                text += (f", {_tps(core_best) / _tps(sp):.2f}x score_psum; score_psum moves "
                         f"{(a['nvlink_bytes'] + a['ib_bytes']) / 1e9:,.0f} GB per device in "
                         f"{a['exposed_comm_seconds']:.3g} s of exposed communication against "
                         f"{(b['nvlink_bytes'] + b['ib_bytes']) / 1e9:,.0f} GB in "
                         f"{b['exposed_comm_seconds']:.3g} s")
            elif sp is core_best:
                text += ", the paper's core is the best one here"
        tp = next((p for p in group if p["series"] == "tp-pp"), None)
        if tp is not None and _tps(tp) and core_best is not None:
            text += f"; tp-pp {num(_tps(tp))} ({_tps(core_best) / _tps(tp):.2f}x for the best core)"
        over = [p for p in group if p.get("projection") and not p["projection"]["fits"]]
        if over:
            text += (f"; does not fit in {capacity} at any batch chunking this batch allows: "
                     + ", ".join(f"{p['series']} ({p['projection']['memory_gb']:.0f} GB)"
                                 for p in over))
        lines.append(text + ".")
    if any(p.get("projection") and not p["projection"]["fits"] for p in seq):
        lines.append("The non-fitting points hold ~10 M tokens per step: helix and tp-pp keep a "
                     "batch chunk's activations replicated over the devices of a data replica and "
                     "the whole batch at rest, so at long sequences they need fewer tokens per "
                     "step (a smaller batch), not a different core. Their throughput is shown as "
                     "computed for the leanest program, flagged here.")
    return lines



def _conclude_dp(points: list[dict]) -> list[str]:
    """The data-axis sweep: scaling efficiency per layout and the winner per device count."""
    dpp = [p for p in points if p["study"] == "dp"]
    lines = []
    for series in dict.fromkeys(p["series"] for p in dpp):
        pts = sorted((p for p in dpp if p["series"] == series and _tps(p)), key=lambda p: p["x"])
        if not pts:
            continue
        base = pts[0]
        eff = ", ".join(f"{p['x']} devices {num(_tps(p))} tokens/s (efficiency "
                        f"{_tps(p) / (_tps(base) * p['x'] / base['x']):.0%}, batch chunks "
                        f"{p['projection']['batch_chunks']}"
                        f"{'' if _fits(p) else ', does not fit'})" for p in pts)
        lines.append(f"{series}: {eff}.")
    if any(_tps(p) and _tps(p) / (_tps(q) * p["x"] / q["x"]) > 1.01
           for p in dpp for q in dpp if q["series"] == p["series"] and q["x"] < p["x"] and _tps(q)):
        lines.append("Efficiency above 100% comes from memory, not magic: with fewer sequences "
                     "per data replica the activations fit in fewer batch chunks, so less of the "
                     "batch is gathered chunk by chunk.")
    for x in dict.fromkeys(p["x"] for p in dpp):
        best = fastest_that_fits([p for p in dpp if p["x"] == x])
        if best:
            lines.append(f"At {x} devices {best['series']} ({best['layout']}) wins with "
                         f"{num(_tps(best))} tokens/s, {num(_tps(best) / x)} per device.")
    return lines



def _conclude_decode(decode: list[dict]) -> list[str]:
    """Decode (analytic): bytes each core moves per step against the KV-cache read."""
    lines = []
    for r in decode:
        lines.append(
            f"S = {r['seq']:,}: score_psum moves {r['score_psum_bytes'] / 1e6:,.1f} MB per device "
            f"per decode step ({num(r['score_psum_s'] * 1e3)} ms), qk_gather "
            f"{r['qk_gather_bytes'] / 1e9:,.2f} GB ({num(r['qk_gather_s'] * 1e3)} ms), seq_a2a "
            f"(K and V gathered) {r['seq_a2a_bytes'] / 1e9:,.2f} GB ({num(r['seq_a2a_s'] * 1e3)} "
            f"ms); reading the KV cache slice takes {num(r['kv_read_s'] * 1e3)} ms. score_psum "
            f"moves {r['qk_gather_bytes'] / r['score_psum_bytes']:.0f}x fewer bytes than "
            f"qk_gather.")
    if decode:
        r = decode[-1]
        lines.append(
            f"So in decode score_psum wins (its communication is "
            f"{r['score_psum_s'] / r['kv_read_s']:.1%} of the KV read at S = {r['seq']:,}, while "
            f"gathering K costs {r['qk_gather_s'] / r['kv_read_s']:.1f}x the KV read), the reverse "
            f"of the prefill/forward ranking in the seq sweep. Analytic: no decode program exists "
            f"in this project.")
    return lines


def conclusions(points: list[dict], decode: list[dict], capacity: str) -> dict[str, list[str]]:
    """Computed statements: who wins where, by how much, and why (bytes), per study."""
    return {"mxn": _conclude_mxn(points), "ep": _conclude_ep(points, capacity),
            "seq": _conclude_seq(points, capacity), "dp": _conclude_dp(points),
            "decode": _conclude_decode(decode)}


def _core(p: dict) -> str | None:
    name = p["series"].split()[-1]
    return name if name in CORES else None


def summary(points: list[dict], decode: list[dict], capacity: str) -> list[str]:
    """The study's answer in a few computed sentences."""
    groups = []
    for study in ("mxn", "seq", "dp"):
        pts = [p for p in points if p["study"] == study]
        refs = [p for p in pts if p["x"] == "ref"]
        for x in dict.fromkeys(p["x"] for p in pts if p["x"] != "ref"):
            groups.append([p for p in pts if p["x"] == x] + refs)
    overall: dict[str, int] = {}
    parallel: dict[str, int] = {}
    ratios, psum_wins, core_groups = [], 0, 0
    for g in groups:
        best = fastest_that_fits(g)
        if best:
            overall[best["series"]] = overall.get(best["series"], 0) + 1
        best = fastest_that_fits([p for p in g if p["series"] != "dp"])
        if best:
            parallel[best["series"]] = parallel.get(best["series"], 0) + 1
        cores = [p for p in g if _core(p) and _fits(p)]
        if len(cores) > 1:
            core_groups += 1
            top = max(cores, key=_tps)
            psum = next((p for p in cores if _core(p) == "score_psum"), None)
            psum_wins += top is psum
            if psum is not None and top is not psum:
                ratios.append(_tps(top) / _tps(psum))
    out = []
    if groups:
        out.append(f"Forward pass, {len(groups)} compiled comparisons (m x n, sequence length, data "
                   f"axis): the winner that fits in {capacity} is "
                   + ", ".join(f"{k} {v} times" for k, v in overall.items())
                   + ". A 2-layer model's forward pass under dp has no communication at all, so "
                   "wherever its replicated weights and activations fit, nothing beats it.")
        none = [g for g in groups if fastest_that_fits([p for p in g if p["series"] != "dp"]) is None]
        out.append("Among the model-parallel layouts (dp left out): "
                   + ", ".join(f"{k} wins {v} times" for k, v in parallel.items())
                   + (f"; at {len(none)} point(s) none of them fits in {capacity} ("
                      + ", ".join(f"{g[0]['study']} {g[0]['x']}" for g in none) + ")"
                      if none else "") + ".")
    if core_groups:
        out.append(f"Among the helix cores with m > 1: score_psum (the paper's) is the fastest at "
                   f"{psum_wins} of {core_groups} points"
                   + (f"; the best core beats it by {min(ratios):.2f}x to {max(ratios):.2f}x, the "
                      f"gap growing with m and with S (its score all-reduce grows as S^2)"
                      if ratios else "") + ".")
    ep = [p for p in points if p["study"] == "ep" and p["x"] != "ref" and _tps(p)]
    if ep:
        fit = [p for p in ep if _fits(p)]
        out.append(f"Expert parallelism on 16 devices: throughput stays within "
                   f"{num(min(map(_tps, ep)))} to {num(max(map(_tps, ep)))} tokens/s for E = "
                   f"{', '.join(str(p['x']) for p in ep)}; the EP degree decides memory: "
                   + (f"E >= {min(p['x'] for p in fit)} fits in {capacity}." if fit else "none fits."))
    if decode:
        r = decode[-1]
        out.append(f"Decode (analytic): score_psum moves "
                   f"{r['qk_gather_bytes'] / r['score_psum_bytes']:.0f}x fewer bytes than gathering "
                   f"K (the head dim, d = 512) and {r['seq_a2a_bytes'] / r['score_psum_bytes']:.0f}x "
                   f"fewer than gathering K and V: the paper's core is the right one for decoding, "
                   f"the wrong one for the forward/prefill pass the paper measures.")
    return out


# ----------------------------------------------------------------------------- output

def _no_fit_note(points: list[dict], capacity: str) -> str:
    """'\ndoes not fit in 80 GB: helix seq_a2a at 40k, 100k; ...' for the points that do not fit."""
    over: dict[str, list] = {}
    for p in points:
        if p.get("projection") and not p["projection"]["fits"]:
            over.setdefault(p["series"], []).append(human(p["x"]))
    by_x: dict[str, list[str]] = {}  # series sharing the same points on one line
    for name, xs in over.items():
        by_x.setdefault(", ".join(xs), []).append(name.removeprefix("helix "))
    return (f"\ndoes not fit in {capacity}:" + "".join(f"\n  {', '.join(v)} at S = {k}"
                                                  for k, v in by_x.items()) if over else "")


def charts(points: list[dict], decode: list[dict], out: Path, hw) -> list[Path]:
    hw_name, capacity = hw.name, gb(hw.hbm_capacity_bytes, 0)
    files = []
    by = lambda study: [p for p in points if p["study"] == study]

    def series_over(study, xs, key, scale=1.0):
        pts = by(study)
        names = list(dict.fromkeys(p["series"] for p in pts if p["x"] != "ref"))
        res = {}
        for name in names:
            vals = []
            for x in xs:
                p = next((q for q in pts if q["series"] == name and q["x"] == x), None)
                v = p["projection"][key] * scale if p and p.get("projection") else None
                vals.append(v)
            res[name] = vals
        return res

    def merge_m1(series: dict) -> dict:  # m = 1: the three cores are one program
        shared = series.pop("any core (m=1)", None)
        if shared is not None:
            for core in CORES:
                if core in series:
                    series[core] = [a if a is not None else b for a, b in zip(series[core], shared)]
        return series

    def total_comm(study, xs):
        nv = series_over(study, xs, "nvlink_bytes", 1e-9)
        ib = series_over(study, xs, "ib_bytes", 1e-9)
        return {k: [None if a is None else a + b for a, b in zip(v, ib[k])] for k, v in nv.items()}

    mxn = by("mxn")
    xs = list(dict.fromkeys(p["x"] for p in mxn if p["x"] != "ref"))
    tps = merge_m1(series_over("mxn", xs, "tokens_per_s"))
    for p in mxn:
        if p["x"] == "ref" and _tps(p):
            tps[f"{p['series']} (reference)"] = [_tps(p)] * len(xs)
    files.append(line_chart(out / "scaling_mxn.png", [
        LinePanel("paper-dense on helix m x n: projected throughput", xs, tps,
                  "m x n (head-dim split x head groups)", "tokens/s (forward, log scale)",
                  logy=True, categorical_x=True, colors=SERIES_COLORS,
                  note=f"priced on {hw_name}; at m=1 the cores are one program"),
        LinePanel("communication per device per step", xs, merge_m1(total_comm("mxn", xs)),
                  "m x n", "GB per device (NVLink + InfiniBand, log)", logy=True,
                  categorical_x=True, colors=SERIES_COLORS)],
        "Helix m x n sweep, per attention core"))

    ep = by("ep")
    xs = [p["x"] for p in ep if p["x"] != "ref"]
    pts = [p for p in ep if p["x"] != "ref"]
    tp = next((p for p in ep if p["x"] == "ref"), None)
    tps = {"ep:ep=E,dp=16/E": [_tps(p) for p in pts]}  # colours: ep blue, tp-pp as elsewhere
    if tp and _tps(tp):
        tps["tp-pp (reference)"] = [_tps(tp)] * len(xs)
    mem = {"memory per device": [p["projection"]["memory_gb"] if p.get("projection") else None
                                 for p in pts],
           f"{capacity} capacity": [hw.hbm_capacity_bytes / 1e9] * len(xs)}
    link = {"NVLink": [p["projection"]["nvlink_bytes"] / 1e9 if p.get("projection") else None
                       for p in pts],
            "InfiniBand": [p["projection"]["ib_bytes"] / 1e9 if p.get("projection") else None
                           for p in pts]}
    files.append(line_chart(out / "scaling_ep.png", [
        LinePanel("paper-moe: projected throughput", xs, tps, "EP degree E (dp = 16/E)",
                  "tokens/s (forward)", categorical_x=True, colors=SERIES_COLORS),
        LinePanel("memory per device", xs, mem, "EP degree E", "GB", categorical_x=True,
                  logy=True),
        LinePanel("communication per device per step", xs, link, "EP degree E",
                  "GB per device", categorical_x=True)],
        "Expert-parallel degree sweep on 16 devices", ncols=3, width=5.2))

    seq = by("seq")
    xs = list(dict.fromkeys(p["x"] for p in seq))
    tps = series_over("seq", xs, "tokens_per_s")
    total = total_comm("seq", xs)
    files.append(line_chart(out / "scaling_seq.png", [
        LinePanel("paper-dense, ~10 M tokens per step: projected throughput", xs, tps,
                  "sequence length S (log)", "tokens/s (forward, log)", logx=True, logy=True,
                  note="B x S = 10.24 M (12.8 M at S = 100k)" + _no_fit_note(seq, capacity),
                  colors=SERIES_COLORS),
        LinePanel("communication per device per step", xs, total, "sequence length S (log)",
                  "GB per device (log)", logx=True, logy=True, colors=SERIES_COLORS)],
        "Sequence length sweep: attention cores, tp-pp and dp"))

    dpp = by("dp")
    xs = list(dict.fromkeys(p["x"] for p in dpp))
    tps = series_over("dp", xs, "tokens_per_s")
    per = series_over("dp", xs, "tokens_per_s_per_device")
    files.append(line_chart(out / "scaling_dp.png", [
        LinePanel("paper-dense, global batch 1024: projected throughput", xs, tps,
                  "devices (log)", "tokens/s (log)", logx=True, logy=True, colors=SERIES_COLORS),
        LinePanel("per device", xs, per, "devices (log)", "tokens/s per device (log)",
                  logx=True, logy=True, colors=SERIES_COLORS)],
        "Adding a data axis: 16, 64, 256 devices (strong scaling)"))

    xs = [r["seq"] for r in decode]
    files.append(line_chart(out / "scaling_decode.png", [
        LinePanel("ANALYTIC: one decode step, per device, 2 layers", xs,
                  {"score_psum (all-reduce scores)": [r["score_psum_s"] * 1e3 for r in decode],
                   "seq_a2a (gather K and V)": [r["seq_a2a_s"] * 1e3 for r in decode],
                   "qk_gather (gather K)": [r["qk_gather_s"] * 1e3 for r in decode],
                   "read the KV cache slice (HBM)": [r["kv_read_s"] * 1e3 for r in decode]},
                  "cached sequence length S (log)", "milliseconds (log)", logx=True, logy=True,
                  note="formulas, no program; B = 1024, helix m=4, n=4")],
        "Decode: communication per core against the KV-cache read", ncols=1, width=7.5))
    return files


def markdown(report: dict) -> str:
    meta = report["meta"]
    pts = report["points"]
    lines = [
        "# Scaling study: where each attention core and each layout wins", "",
        markdown_header(report["generated_by"]), "",
        (f"Written by `{meta['command']}` on {meta['created_utc']} in {meta['elapsed_s']:.0f} s. "
        f"Every number except the decode section is a projection: the full-size model compiled "
        f"for the layout on fake devices, FLOPs, memory and collectives read off the program and "
        f"priced on **{meta['hardware']}** (NVLink, InfiniBand, GPUs per node and memory per the "
        f"paper's cluster; `helix_jax.analysis.costmodel.project`). Forward pass only."), "",
        "## Summary (computed)", "", *[f"- {line}" for line in report["summary"]], ""]
    studies = {
        "mxn": "## helix m x n on paper-dense (16 devices)",
        "ep": "## Expert-parallel degree on paper-moe (16 devices: ep:ep=E,dp=16/E)",
        "seq": ("## Sequence length on paper-dense (B x S ≈ 10.24 M tokens per step; "
                "B = 10240, 4096, 1024, 256, 128 for S = 1000, 2500, 10000, 40000, 100000 — "
                "the last holds 12.8 M)"),
        "dp": "## helix with a data axis: 16, 64, 256 devices (global batch 1024)",
    }
    for study, title in studies.items():
        rows = [p for p in pts if p["study"] == study]
        if not rows:
            continue
        lines += [title, "",
                  ("| x | layout | devices | tokens/s | step s = compute + exposed comm | MFU | "
                  "memory GB (fits) | NVLink GB | InfiniBand GB | batch chunks |"),
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for p in rows:
            pr = p.get("projection")
            if pr is None:
                lines.append(f"| {p['x']} | `{p['layout']}` | {p['devices']} | failed: "
                             f"{p.get('error', '')} | | | | | | |")
                continue
            lines.append(
                f"| {p['x']} | `{p['layout']}` | {p['devices']} | {num(pr['tokens_per_s'])} | "
                f"{pr['step_seconds']:.3g} = {pr['compute_seconds']:.3g} + "
                f"{pr['exposed_comm_seconds']:.3g} | {pr['mfu']:.1%} | {pr['memory_gb']:.1f} "
                f"({'yes' if pr['fits'] else 'no'}) | {pr['nvlink_bytes'] / 1e9:,.0f} | "
                f"{pr['ib_bytes'] / 1e9:,.0f} | {pr['batch_chunks']} |")
        lines += ["", "**Where each wins (computed):**", ""]
        lines += [f"- {s}" for s in report["conclusions"].get(study, [])] + [""]
    lines += ["## Decode (ANALYTIC: formulas, not a compiled program)", "",
              decode_analytic.__doc__.strip().replace("\n    ", "\n"), "",
              "| S | KV read ms | score_psum MB / ms | qk_gather GB / ms | seq_a2a GB / ms |",
              "|---|---|---|---|---|"]
    for r in report["decode_analytic"]:
        lines.append(f"| {r['seq']:,} | {r['kv_read_s'] * 1e3:.3g} | "
                     f"{r['score_psum_bytes'] / 1e6:,.1f} / {r['score_psum_s'] * 1e3:.3g} | "
                     f"{r['qk_gather_bytes'] / 1e9:,.2f} / {r['qk_gather_s'] * 1e3:.3g} | "
                     f"{r['seq_a2a_bytes'] / 1e9:,.2f} / {r['seq_a2a_s'] * 1e3:.3g} |")
    lines += ["", "**Where each wins (computed):**", ""]
    lines += [f"- {s}" for s in report["conclusions"].get("decode", [])] + [""]
    lines += ["## Charts", ""] + [f"![{f}]({f})" for f in report["files"] if f.endswith(".png")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results", help="output folder (default: results)")
    parser.add_argument("--quick", action="store_true", help="fewer points per sweep")
    parser.add_argument("--hardware", default="h100-paper", help="hardware profile or file")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--replot", action="store_true",
                        help="reuse the points of <out>/scaling.json (no compiling): rewrite the "
                        "conclusions, Markdown and charts")
    args = parser.parse_args(argv)
    from tqdm.auto import tqdm

    start = time.perf_counter()
    out = Path(args.out)
    if args.replot:
        old = json.loads((out / "scaling.json").read_text())
        points, meta = old["points"], old["meta"]
        hw = load_hardware(meta["hardware"])
        meta["replotted_utc"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        command = "python experiments/scaling.py --replot"
    else:
        hw = load_hardware(args.hardware)
        points = []
        bar = tqdm(plan(args.quick), desc="scaling", unit="point", disable=not args.progress,
                   dynamic_ncols=True)
        for pt in bar:
            bar.set_postfix_str(f"{pt['study']} {pt['layout']} {pt.get('overrides', '')}")
            points.append(run_point(pt, hw))
        bar.close()
        command = "python experiments/scaling.py" + (" --quick" if args.quick else "")
        meta = {"command": command,
                "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "hardware": hw.name, "quick": args.quick,
                "elapsed_s": time.perf_counter() - start}
    decode = decode_analytic(hw)
    capacity = gb(hw.hbm_capacity_bytes, 0)
    out.mkdir(parents=True, exist_ok=True)
    files = charts(points, decode, out, hw)
    report = {
        "generated_by": generated_by(command),
        "meta": meta,
        "summary": summary(points, decode, capacity),
        "points": points,
        "decode_analytic": decode,
        "conclusions": conclusions(points, decode, capacity),
        "files": ["scaling.json", "scaling.md"] + [f.name for f in files],
    }
    (out / "scaling.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "scaling.md").write_text(markdown(report))
    for line in report["summary"]:
        print(f"- {line}")
    print(f"wrote {', '.join(report['files'])} into {out} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
