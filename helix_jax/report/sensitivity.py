"""How much each hardware constant moves the validation: the published training steps projected
with one constant of their profile at each end of the range its sources quote
(`experiments/sensitivity.py` runs it on `experiments/validate_measured.py`'s rows)."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

from helix_jax.analysis.costmodel.hardware import load_hardware
from helix_jax.analysis.costmodel.project import project
from helix_jax.analysis.planner.cache import ProgramCache
from helix_jax.config import load_model_file
from helix_jax.layouts import parse_layout
from helix_jax.report.fmt import pct
from helix_jax.report.provenance import markdown_header

# (profile, field) -> (low, high, where the range is quoted). The profile's own value lies inside.
RANGES: dict[tuple[str, str], tuple[float, float, str]] = {
    ("dgx-h100", "flops_per_s"): (750e12, 800e12, "large bf16 matmuls on H100 SXM: about 750-800 "
                                  "TFLOP/s achieved (MAMF 792.1, S. Bekman's ml-engineering)"),
    ("dgx-h100", "attention_flops_per_s"): (600e12, 740e12, "FlashAttention-3 (Shah et al. 2024):"
                                            " 600+ TFLOP/s, up to 740 TFLOP/s fp16 forward"),
    ("dgx-h100", "hbm_bytes_per_s"): (3.0e12, 3.35e12, "about 3.0 TB/s measured of the 3.35 TB/s "
                                      "HBM3 datasheet peak"),
    ("dgx-h100", "nic_bytes_per_s"): (36e9, 45e9, "one 400 Gb/s ConnectX-7 per GPU: about 36-45 "
                                      "GB/s achieved point to point"),
    ("dgx-a100", "flops_per_s"): (267.9e12, 312e12, "MAMF of A100 SXM bf16 267.9 TFLOP/s up to the "
                                  "312 TFLOP/s datasheet peak"),
    ("dgx-a100", "attention_flops_per_s"): (156e12, 228e12, "FlashAttention-2 (Dao 2023): 50-73% "
                                            "of A100's 312 TFLOP/s peak"),
    ("dgx-a100", "hbm_bytes_per_s"): (1.8e12, 2.039e12, "about 90% of, up to, the 2.039 TB/s HBM2e "
                                      "datasheet peak"),
    ("dgx-a100", "nic_bytes_per_s"): (21e9, 25e9, "one 200 Gb/s HDR per GPU = 25 GB/s; ~85 GB/s "
                                      "per 4 HDR measured = ~21-24 GB/s per GPU"),
}


def error(row: dict, hw, cache: ProgramCache, models: Path) -> float:
    """Projected / measured - 1 of one validation row (its model file in `models`) on `hw`."""
    cfg = load_model_file(models / f"{row['model']}.toml").replace(
        batch=row["batch"], seq=row["seq"], dtype=row["dtype"])
    p = project(cfg, parse_layout(row["layout"]), hw, mode="train", remat=row["remat"],
                compiler=cache, attention_pricing=row.get("attention", "flash"),
                composed=row.get("composed"))
    return p.step_seconds / row["measured"] - 1


def study(rows: list[dict], models: Path, progress: bool = True) -> dict:
    """Per row: the error with the profile as it is and with each constant of its profile at the
    ends of its quoted range; per constant: the median |error| over the rows at each end."""
    from tqdm.auto import tqdm

    cache = ProgramCache(None)
    out, constants = [], {}
    for row in tqdm(rows, desc="sensitivity", unit="row", disable=not progress):
        hw = load_hardware(row["hardware"])
        r = {"label": row["label"], "hardware": row["hardware"], "measured": row["measured"],
             "error": error(row, hw, cache, models), "variants": {}}
        for (profile, field), (lo, hi, _) in RANGES.items():
            if profile != row["hardware"]:
                continue
            r["variants"][field] = {end: error(row, dataclasses.replace(hw, **{field: value}),
                                               cache, models)
                                    for end, value in (("low", lo), ("high", hi))}
        out.append(r)
    for (profile, field), (lo, hi, source) in RANGES.items():
        mine = [r for r in out if r["hardware"] == profile]
        if not mine:
            continue
        constants[f"{profile} {field}"] = {
            "profile": profile, "field": field, "value": getattr(load_hardware(profile), field),
            "low": lo, "high": hi, "source": source,
            "median_abs_error": {end: statistics.median(abs(r["variants"][field][end])
                                                        for r in mine) for end in ("low", "high")},
            "max_shift": max(abs(r["variants"][field][end] - r["error"])
                             for r in mine for end in ("low", "high"))}
    return {"rows": out, "constants": constants,
            "median_abs_error": statistics.median(abs(r["error"]) for r in out)}


def _num(v: float) -> str:
    return f"{v / 1e12:g} T" if v >= 1e12 else f"{v / 1e9:g} G"


def markdown(report: dict) -> str:
    lines = ["# How much does each hardware constant move the validation?", "",
             markdown_header(report["generated_by"]), "",
             "Every published training step of `experiments/validate_measured.py`, projected with "
             "one constant of its profile at each end of the range its sources quote (the others "
             "as they are). The error is projected / measured − 1; the profiles' own values are "
             f"in `helix_jax/analysis/costmodel/hardware.py`. With the profiles as they are the median "
             f"|error| over these rows is {pct(report['median_abs_error'])}.", "",
             "| constant | profile value | quoted range | median abs error at low / high | "
             "largest |shift| of a row | source of the range |", "|---|---|---|---|---|---|"]
    for c in report["constants"].values():
        lines.append(f"| {c['profile']} `{c['field']}` | {_num(c['value'])} | {_num(c['low'])} – "
                     f"{_num(c['high'])} | {pct(c['median_abs_error']['low'])} / "
                     f"{pct(c['median_abs_error']['high'])} | {pct(c['max_shift'])} | "
                     f"{c['source']} |")
    fields = list(dict.fromkeys(f for r in report["rows"] for f in r["variants"]))
    lines += ["", "Per row, the error with the profile as it is and at each end (low / high):", "",
              "| row | hardware | error | " + " | ".join(f"`{f}`" for f in fields) + " |",
              "|---|---|---|" + "---|" * len(fields)]
    for r in report["rows"]:
        cells = [f"{r['variants'][f]['low']:+.1%} / {r['variants'][f]['high']:+.1%}"
                 if f in r["variants"] else "–" for f in fields]
        lines.append(f"| {r['label']} | {r['hardware']} | {r['error']:+.1%} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
