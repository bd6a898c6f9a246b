"""Projections read off compiled programs: memory fits, numbers agree with the formulas."""

import json

import pytest

from helix_jax import cli
from helix_jax.analysis import load_hardware
from helix_jax.analysis.costmodel.formulas import forward_flops_per_token
from helix_jax.analysis.costmodel.project import project
from helix_jax.config import resolve_model
from helix_jax.layouts import parse_layout

HW = load_hardware("h100-paper")

# Every layout of both paper models with the batch chunking `helix project` finds to fit 80 GB
# (fixed here so each is one compile).
PAPER = [
    ("paper-dense", "helix", 32), ("paper-dense", "helix:core=seq_a2a", 32),
    ("paper-dense", "helix:core=qk_gather", 32), ("paper-dense", "tp-pp", 16),
    ("paper-dense", "dp", 4), ("paper-moe", "ep", 8), ("paper-moe", "ep:chunks=4", 8),
    ("paper-moe", "tp-pp", 16), ("paper-moe", "helix-ep", 32),
]


def check_consistent(r):
    p = r["projected"]
    assert p["tokens_per_s"] * p["step_seconds"] == pytest.approx(r["tokens_per_step"], rel=1e-9)
    assert 0 < p["mfu"] <= 1
    assert p["step_seconds"] == pytest.approx(p["compute_seconds"] + p["exposed_comm_seconds"])
    assert p["tpot_ms"] == pytest.approx(p["step_seconds"] / r["seq"] * 1e3)
    assert sum(r["comm_bytes_per_device"].values()) == pytest.approx(sum(r["comm_bytes_by_op"].values()))


def check_formulas(r, tol=0.10):
    """Every collective op's bytes agree with the formula, and nothing unexpected is sent."""
    got, want = r["comm_bytes_by_op"], r["expected_comm_bytes_by_op"]
    total = sum(got.values())
    for op in set(got) | set(want):
        g, w = got.get(op, 0.0), want.get(op, 0.0)
        if w == 0:  # only tiny statistics (MoE drop counts) may appear unannounced
            assert g <= 0.01 * total, (op, g)
        else:
            assert g == pytest.approx(w, rel=tol), (op, g, w)


@pytest.mark.parametrize("model, spec, chunks", PAPER)
def test_paper_layouts_fit_and_match_the_formulas(model, spec, chunks):
    r = project(resolve_model(model), parse_layout(spec), HW, batch_chunks=chunks).to_dict()
    assert r["fits"] and r["memory_bytes_per_device"] <= 80e9
    check_consistent(r)
    check_formulas(r)


def test_score_psum_payload_is_within_the_formula_range():
    cfg = resolve_model("paper-dense")
    r = project(cfg, parse_layout("helix"), HW, batch_chunks=32).to_dict()
    scores = [c for c in r["collectives"] if c["op"] == "all-reduce" and c["group_size"] == 4]
    total = sum(c["payload_bytes_per_device"] * c["count"] for c in scores)
    full = cfg.n_layers * cfg.batch * (cfg.n_heads // 4) * cfg.seq**2 * 2
    assert 0.5 * full <= total <= 1.1 * full  # causal: about half the blocks are skipped
    assert {c["link"] for c in scores} == {"nvlink"}  # dim groups stay inside a node
    # the program's FLOPs: the model's, split 16 ways, plus the causal diagonal blocks
    per_device = forward_flops_per_token(cfg) * cfg.batch * cfg.seq / 16
    assert per_device <= r["flops_per_device"] <= 1.02 * per_device


@pytest.mark.parametrize("model, spec", [
    ("small-dense", "helix"), ("small-dense", "helix:core=seq_a2a"), ("small-dense", "tp-pp:sp=true"),
    ("small-moe", "ep:chunks=2"), ("small-moe", "tp-pp"), ("small-moe", "helix-ep"),
])
def test_small_scale_matches_the_formulas(model, spec):
    cfg = resolve_model(model, dtype="float16")
    r = project(cfg, parse_layout(spec), HW, batch_chunks=1).to_dict()
    check_consistent(r)
    check_formulas(r)


def test_too_few_chunks_do_not_fit():
    r = project(resolve_model("paper-dense"), parse_layout("helix"), HW, batch_chunks=1)
    assert not r.fits and r.memory_bytes_per_device > 80e9


def test_cli_project_writes_json(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert cli.main(["project", "--model", "paper-dense", "--layout", "tp-pp", "--batch-chunks",
                     "16", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    for key in ("model", "layout", "devices", "tokens_per_step", "flops_per_device",
                "model_flops_per_token", "memory_bytes_per_device", "collectives",
                "comm_bytes_per_device", "projected"):
        assert key in data
    assert set(data["comm_bytes_per_device"]) == {"nvlink", "ib"}
    assert {"op", "dtype", "group_size", "count", "payload_bytes_per_device", "link"} <= set(
        data["collectives"][0])
    assert "projected" in capsys.readouterr().out


def test_unknown_hardware_is_a_clear_error(capsys):
    assert cli.main(["project", "--hardware", "h200-imaginary"]) == 2
    assert "h100-paper" in capsys.readouterr().err
