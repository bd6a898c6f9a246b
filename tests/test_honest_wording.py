"""Honest wording: the priced-only mark follows a layout's options, verdicts follow the numbers they
state, the reproduce report opens with its answer, and the committed reports re-render from JSON."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helix_jax.analysis import load_hardware
from helix_jax.report import paper
from helix_jax.report.answer import answer_lines, mode_cell
from helix_jax.report.planning import readme_block
from helix_jax.report.wording import (
    PRICED_ONLY,
    PRICED_ONLY_NOTE,
    above,
    beats,
    mark_why,
    priced_only_footnote,
    priced_only_mark,
    priced_only_options,
    yes_no,
)

ROOT = Path(__file__).resolve().parent.parent
HW = load_hardware("h100-paper")


@pytest.mark.parametrize("label, options", [
    ("tp-pp", []),
    ("tp-pp:schedule=gpipe,virtual=1,tp_overlap=false@none", []),
    ("dp", []),
    ("ep:chunks=4@gspmd", []),
    ("tp-pp:schedule=1f1b", []),  # runs: parallel.one_f_one_b
    ("tp-pp:schedule=1f1b,virtual=2@selective", []),
    ("tp-pp:sp=true,tp_overlap=true", []),  # runs: collective matmuls
    ("tp-pp:tp_overlap=true", ["tp_overlap=true without sp"]),
    ("tp-pp:tp=1,pp=2,tp_overlap=true", []),  # no tensor collectives to overlap
    ("tp-pp:tp_overlap=true,schedule=1f1b,virtual=2", ["tp_overlap=true without sp"]),
])
def test_the_mark_follows_each_option(label, options):
    assert priced_only_options(label) == options
    assert priced_only_mark(label) == (PRICED_ONLY if options else "")
    assert priced_only_footnote([label, "dp"]) == (["", PRICED_ONLY_NOTE] if options else [])


def test_mark_why_marks_the_leading_label_once():
    label = "tp-pp:tp_overlap=true@none"
    why = f"{label}: compute 8.6 s of its 10 s step; tp-pp@none loses 9 s"
    marked = mark_why(why, label)
    assert marked.startswith(f"{label}{PRICED_ONLY}: ") and marked.count(PRICED_ONLY) == 1
    assert mark_why(marked, label) == marked
    assert mark_why("dp: compute 3 s", "dp") == "dp: compute 3 s"


def test_comparison_words_flip_with_the_numbers():
    assert (beats(2.0, 1.0), beats(1.0, 2.0), beats(1.0, 1.0)) == ("beats", "loses to",
                                                                    "is level with")
    assert beats(1.0, 2.0, higher_is_better=False) == "beats"
    assert (above(2.0, 1.0), above(1.0, 2.0)) == ("above", "below")
    assert (yes_no(3.0, 1.0), yes_no(1.0, 3.0)) == ("yes", "no")


def _plan_report(best: str, published: str) -> dict:
    """A results/plan.json with one paper training run and one Megatron run."""
    def cand(label: str, step: float) -> dict:
        return {"label": label, "projection": {"step_seconds": step, "tokens_per_s": 1e6 / step,
                                               "mfu": 0.5}}

    common = {"counts": {"considered": 9, "projected": 3}, "seconds": 12.0, "batch": 8,
              "config": {"batch": 8}}
    run = {**common, "model": "m", "mode": "train", "hardware": "h100-paper", "best": best,
           "candidates": [cand(best, 2.0)], "why": f"{best}: compute 2 s of its 2 s step"}
    mega = {**common, "model": "g", "mode": "train", "hardware": "dgx-h100", "best": best,
            "candidates": [cand(best, 0.4), cand(published, 0.5)], "why": "",
            "megatron": {"label": "1.7B", "devices": 48, "measured_s": 0.45,
                         "published": published, "published_projected_s": 0.5,
                         "published_fits": True, "changes": ["tp 2 -> 1"]}}
    return {"runs": [run, mega]}


def test_readme_block_marks_priced_only_layouts_and_says_measured_only_for_measured():
    plain = readme_block(_plan_report("tp-pp:tp=2@none", "tp-pp:tp=1@none"))
    assert PRICED_ONLY not in plain and PRICED_ONLY_NOTE not in plain
    assert "measured 0.45 s, projected 0.5 s;" in plain and "published 0.5" not in plain
    marked = readme_block(_plan_report("tp-pp:tp=2,tp_overlap=true@none", "tp-pp:tp=1@none"))
    assert f"| 2{PRICED_ONLY} | 500,000{PRICED_ONLY} |" in marked
    assert f"tp_overlap=true@none{PRICED_ONLY}: compute" in marked
    assert f"best found 0.4 s{PRICED_ONLY}" in marked and marked.endswith(PRICED_ONLY_NOTE)
    assert "projected 0.5 s;" in marked  # the published layout runs as priced: no mark


def _row(spec: str, layout: str, tokens: float, fits: bool = True) -> dict:
    p = {"tokens_per_s": tokens, "step_seconds": 1e6 / tokens, "tpot_ms": 1e3 / tokens,
         "fits": fits}
    return {"row": spec, "layout": layout, "claim": {"tokens_per_s": tokens},
            "projection": p, "projection_train": dict(p), "projection_decode": dict(p)}


def test_the_answer_flips_with_the_numbers():
    def report(helix: float, tp: float) -> dict:
        return {"meta": {"hardware": "h100-paper"}, "hardware": {"hbm_capacity_bytes": 80e9},
                "tables": {"dense": {"rows": [_row("tp-pp", "tp-pp", tp),
                                              _row("helix", "helix", helix)]}}}

    wins = "\n".join(answer_lines(report(2e6, 1e6)))
    loses = "\n".join(answer_lines(report(1e6, 2e6)))
    assert wins.startswith("## The answer") and "does `helix` beat `tp-pp`" in wins
    for mode in ("forward", "training", "decode"):
        assert f"**yes**: 2,000,000 against 1,000,000 {mode} tokens/s" in wins
        assert f"**no**: 1,000,000 against 2,000,000 {mode} tokens/s" in loses
    base = _row("tp-pp", "tp-pp:tp_overlap=true", 1e6, fits=False)
    cell = mode_cell(_row("helix", "helix", 2e6), base, "training", "80 GB")
    assert f"1,000,000{PRICED_ONLY} training tokens/s" in cell
    assert cell.endswith("`tp-pp` does not fit 80 GB")


def _projection(tokens: float) -> dict:
    return {"projected": {"tokens_per_s": tokens}, "fits": True}


def test_the_ranking_verdict_flips_when_the_projections_flip():
    helix_wins = paper._ranking_statement(
        "dense", "tp-pp", "helix", {("dense", "tp-pp"): _projection(1e6),
                                    ("dense", "helix"): _projection(2e6)})
    helix_loses = paper._ranking_statement(
        "dense", "tp-pp", "helix", {("dense", "tp-pp"): _projection(2e6),
                                    ("dense", "helix"): _projection(1e6)})
    assert helix_wins["verdict"] == "ranking holds"  # the paper also has helix ahead
    assert "in the projections helix beats tp-pp" in helix_wins["text"]
    assert helix_loses["verdict"] == "ranking reversed"
    assert "in the projections helix loses to tp-pp" in helix_loses["text"]


def test_claim_verdicts_flip_with_the_claims(monkeypatch):
    ctx = paper._Context(HW)
    assert paper._memory_statement(ctx)["verdict"] == "cannot hold"
    assert paper._expert_compute_statement(ctx)["verdict"] == "cannot hold"
    assert paper._timeline_statement(ctx)["verdict"] == "inconsistent"
    monkeypatch.setitem(paper.MOE_REPORT, "ep_memory_bytes", 1e12)
    monkeypatch.setitem(paper.MOE_REPORT, "expert_compute_ms", 1e4)
    assert paper._memory_statement(ctx)["verdict"] == "possible"
    compute = paper._expert_compute_statement(ctx)
    assert compute["verdict"] == "possible" and "of the H100's" in compute["text"]
    peaks = {s["id"]: s["verdict"] for s in paper._peak_statements(ctx)}
    assert peaks["peak-dense-helix"] == "cannot hold as training"
    assert peaks["peak-dense-tp-pp"] == "possible as forward or training throughput"


def test_ep_volume_verdict_flips_with_the_all_to_all_time():
    k = paper.check_claim(paper.claim("moe", "ep"), HW)

    def pe(seconds: float) -> dict:
        return {"comm_bytes_by_op": {"all-to-all": 1e9},
                "collectives": [{"op": "all-to-all", "seconds": seconds}]}

    small, large = paper._ep_volume_statement(pe(0.1), k), paper._ep_volume_statement(pe(1e3), k)
    assert small["verdict"] == "inconsistent" and "cannot be what" in small["text"]
    assert large["verdict"] == "consistent" and "can be what" in large["text"]


def test_reproduce_renders_from_its_json_answer_first(tmp_path):
    from helix_jax.report.render import render_reproduce

    shutil.copy(ROOT / "results" / "reproduce.json", tmp_path / "reproduce.json")
    before = json.loads((tmp_path / "reproduce.json").read_text())
    report = render_reproduce(tmp_path, charts=False, command="test")
    after = json.loads((tmp_path / "reproduce.json").read_text())
    assert after["generated_by"] == before["generated_by"] and after["rendered_by"]["command"] == "test"
    assert after["tables"] == before["tables"]  # numbers untouched: nothing recomputed
    assert [s["id"] for s in after["cannot_hold"]] == [s["id"] for s in before["cannot_hold"]]
    text = (tmp_path / "reproduce.md").read_text()
    assert text.index("## The answer") < text.index("## Summary") < text.index("| layout |")
    assert "Rendered again from `reproduce.json` by `test`" in text
    assert report["cannot_hold"] == after["cannot_hold"]


def test_plan_renders_from_its_json(tmp_path):
    shutil.copy(ROOT / "results" / "plan.json", tmp_path / "plan.json")
    plan = json.loads((tmp_path / "plan.json").read_text())
    subprocess.run([sys.executable, str(ROOT / "experiments" / "plan.py"), "--render-only",
                    "--out", str(tmp_path), "--no-readme"], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    text = (tmp_path / "plan.md").read_text()
    assert "Rendered again from `plan.json`" in text
    marked = [r["best"] for r in plan["runs"] if r["best"] and priced_only_mark(r["best"])]
    assert (PRICED_ONLY_NOTE in text) == bool(marked)
