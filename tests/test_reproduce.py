"""`helix reproduce` on a reduced setting, the paper arithmetic, the charts and the timing helper.

Kept fast: the reduced report projects two dense rows at batch 64 (not the paper's 1024) and times
a tiny model once; the paper's own shapes are only used in arithmetic that compiles nothing.
"""

import argparse
import json
import re

import pytest

from helix_jax.analysis import load_hardware
from helix_jax.config import resolve_model
from helix_jax.report import paper
from helix_jax.report.bench import trimmed_mean

HW = load_hardware("h100-paper")
TINY = {"d_model": 128, "head_dim": 8, "d_ff": 512, "batch": 16, "seq": 32}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from helix_jax.commands.reproduce import run_reproduce

    out = tmp_path_factory.mktemp("reproduce")
    rep = run_reproduce(out, quick=True, progress=False, tables=("dense",), rows=("tp-pp", "helix"),
                        warmup=0, repeat=1, project_overrides={"batch": 64},
                        measure_overrides=TINY)
    return out, rep


def test_paper_arithmetic_matches_design_section_4():
    dense = paper.limits(resolve_model("paper-dense"), HW)
    moe = paper.limits(resolve_model("paper-moe"), HW)
    assert dense["flops_per_token"] == pytest.approx(3.88e9, rel=2e-3)  # non-causal
    assert dense["flops_per_token_causal"] < dense["flops_per_token"]
    assert moe["flops_per_token"] == pytest.approx(7.75e9, rel=2e-3)
    assert dense["peak_tokens_per_s"] == pytest.approx(4.08e6, rel=2e-3)
    assert moe["peak_tokens_per_s"] == pytest.approx(2.04e6, rel=2e-3)
    assert dense["kv_cache_bytes"] == pytest.approx(671e9, rel=1e-3)
    assert dense["decode_step_min_s"] == pytest.approx(12.5e-3, rel=1e-2)
    helix = paper.check_claim(paper.claim("dense", "helix"), HW)
    assert helix["fraction_of_peak"] == pytest.approx(0.387, abs=1e-3)
    assert helix["implied_step_s"] == pytest.approx(1024 * 10000 / 1.58e6)
    ep = paper.check_claim(paper.claim("moe", "ep"), HW)
    assert ep["fraction_of_peak"] == pytest.approx(0.2205, abs=1e-3)
    assert {(c.table, c.layout) for c in paper.CLAIMS} == {
        ("dense", "tp-pp"), ("dense", "helix"), ("moe", "tp-pp"), ("moe", "ep")}


def _has_numbers(statement: dict) -> bool:
    return bool(statement["numbers"]) and bool(re.search(r"\d", statement["text"]))


def test_claim_statements_carry_numbers():
    statements = paper.claim_statements(HW)
    assert len({s["id"] for s in statements}) == len(statements)
    assert all(_has_numbers(s) for s in statements)
    by_id = {s["id"]: s for s in statements}
    assert by_id["moe-expert-compute"]["numbers"]["over_peak"] > 100  # 5 ms is ~139x peak
    assert by_id["decode-dense"]["numbers"]["decode_step_min_ms"] > 0.35


def test_reproduce_writes_report(report):
    out, _rep = report
    for name in ("reproduce.json", "reproduce.md", "reproduce_tokens.png", "reproduce_comm.png",
                 "reproduce_step.png"):
        assert (out / name).stat().st_size > 0, name
    for name in ("reproduce_tokens.png", "reproduce_comm.png", "reproduce_step.png"):
        assert (out / name).read_bytes()[:8] == PNG
    data = json.loads((out / "reproduce.json").read_text())
    assert {"meta", "hardware", "paper", "limits", "tables", "cannot_hold", "files"} <= set(data)
    rows = data["tables"]["dense"]["rows"]
    assert [r["row"] for r in rows] == ["tp-pp", "helix"]
    for r in rows:
        p = r["projection"]
        assert p["tokens_per_s"] * p["step_seconds"] == pytest.approx(p["tokens_per_step"])
        assert p["tokens_per_step"] == 64 * 10000
        assert p["step_seconds"] == pytest.approx(p["compute_seconds"] + p["exposed_comm_seconds"])
        assert 0 < p["mfu"] <= 1
        assert r["claim"]["tokens_per_s"] > 0
        t = r["projection_train"]  # the training step beside the forward pass
        assert t["tokens_per_step"] == 64 * 10000 and t["step_seconds"] > p["step_seconds"]
        if r["row"] == "helix":  # compiled whole: forward + backward = 3x the forward's matmuls
            assert t["flops_per_device"] / p["flops_per_device"] == pytest.approx(3, rel=0.1)
        else:  # tp-pp with pp = 2: composed from one stage, and it says so
            assert t["extended_by_formula"]
        d = r["projection_decode"]  # the paper's TPOT against a compiled decode step
        assert d["tpot_ms"] >= d["hbm_floor_ms"] > 0 and d["context"] == 10000
        m = r["measured"]
        assert m["repeat"] == 1 and len(m["times_s"]) == 1 and m["output_finite"]
        assert m["tokens_per_s_median"] == pytest.approx(16 * 32 / m["median_s"])
    assert data["cannot_hold"] and all(_has_numbers(s) for s in data["cannot_hold"])
    assert all("dense" in s["tables"] for s in data["cannot_hold"])  # only the table that ran
    text = (out / "reproduce.md").read_text()
    assert "Where the paper's figures cannot hold" in text and "rank nothing about GPUs" in text


def test_projection_statements_carry_numbers(report):
    _, rep = report
    projections = {("dense", r["row"]): r["projection_detail"]
                   for r in rep["tables"]["dense"]["rows"]}
    statements = paper.projection_statements(projections, HW)
    ids = {s["id"] for s in statements}
    assert {"projection-dense-tp-pp", "projection-dense-helix", "ranking-dense"} <= ids
    assert all(_has_numbers(s) for s in statements)


def test_cli_hooks(report, monkeypatch, capsys):
    from helix_jax.commands import reproduce

    parser = argparse.ArgumentParser()
    reproduce.add_reproduce_args(parser)
    args = parser.parse_args(["--quick", "--out", "somewhere", "--tables", "dense"])
    assert args.quick and args.out == "somewhere" and args.measure and args.progress
    assert args.hardware == "h100-paper"
    seen = {}

    def fake(out, **kwargs):
        seen.update(kwargs, out=out)
        return report[1]

    monkeypatch.setattr(reproduce, "run_reproduce", fake)
    assert reproduce.cmd_reproduce(args) == 0
    assert seen["out"] == "somewhere" and seen["quick"] and seen["tables"] == ["dense"]
    printed = capsys.readouterr().out
    assert "tokens/s projected" in printed and "reproduce.md" in printed


def test_reproduce_rejects_unknown_rows(tmp_path):
    from helix_jax.commands.reproduce import run_reproduce

    with pytest.raises(ValueError, match="no rows left"):
        run_reproduce(tmp_path, progress=False, tables=("dense",), rows=("nope",))
    with pytest.raises(ValueError, match="unknown table"):
        run_reproduce(tmp_path, progress=False, tables=("sparse",))


def test_plots_write_pngs(tmp_path):
    from helix_jax.report.plots import BarPanel, LinePanel, bar_chart, human, line_chart

    bars = bar_chart(tmp_path / "bars.png", [
        BarPanel("grouped, log", ["a", "b:core=x"], {"s1": [1e6, None], "s2": [2e5, 3e6]},
                 "tokens/s", log=True),
        BarPanel("stacked", ["a", "b"], {"x": [1.0, 2.0], "y": [0.5, None]}, "s", stacked=True,
                 markers={"claim": [2.0, None]})], "title")
    lines = line_chart(tmp_path / "lines.png", [
        LinePanel("lines", [1, 10, 100], {"s": [1.0, None, 3.0]}, "x", "y", logx=True, logy=True)],
        "title")
    for path in (bars, lines):
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 1000
    assert human(1.58e6) == "1.58M" and human(None) == "n/a" and human(0.22) == "0.22"


def test_trimmed_mean():
    assert trimmed_mean([1.0, 2.0, 3.0, 100.0], trim=0.25) == 2.5
    assert trimmed_mean([5.0], trim=0.4) == 5.0
    assert trimmed_mean([1.0, 2.0, 3.0], trim=0.1) == 2.0  # floor(0.3) = 0 cut
    with pytest.raises(ValueError):
        trimmed_mean([])
