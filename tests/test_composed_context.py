"""Composed training projections (pipeline stages and data replicas extended by formula) of
layouts with context and expert parallelism: what the stage compiles (its context ranks and one
expert-parallel group), what is extended (a context group larger than the fake devices, uneven
stages), and the per-device parameters that the memory formula rests on."""

import pytest

from helix_jax import resolve_model
from helix_jax.analysis.costmodel.compose import project_composed
from helix_jax.analysis.costmodel.hardware import HARDWARE
from helix_jax.analysis.costmodel.project import check_projection, project
from helix_jax.layouts import parse_layout

HW = HARDWARE["dgx-h100"]


def test_the_stage_compiles_the_ep_group_and_the_memory_counts_its_experts():
    """tiny-mixtral on tp 2 x pp 2 x cp 2 x dp 4 with ep 4 (2 data ranks x the 2 context ranks):
    the stage is one expert-parallel group's 8 devices; its all-to-alls are read off it (two per
    MoE layer forward, two backward), and each device holds E x 3 D F x layers / (pp tp ep) expert
    parameters."""
    cfg = resolve_model("tiny-mixtral", capacity_factor=16.0).replace(batch=8, seq=32)
    layout = parse_layout("tp-pp:tp=2,pp=2,cp=2,dp=4,ep=4,microbatches=2")
    d = project(cfg, layout, HW, mode="train").to_dict()
    assert "tp-pp:tp=2,pp=1" in d["compiled"] and "cp=2" in d["compiled"]
    assert "dp=2" in d["compiled"] and "ep=4" in d["compiled"] and "8 devices" in d["compiled"]
    layers = cfg.n_layers // 2
    a2a = [r for r in d["collectives"] if r["op"] == "all-to-all"]
    assert [(r["group_size"], r["count"]) for r in a2a] == [(4, 4 * layers)]
    experts = cfg.n_experts * 3 * cfg.d_model * cfg.d_ff * layers // (2 * 4)
    assert d["memory"]["expert_parameters_per_device"] == experts
    assert any("expert gradients over 2" in e for e in d["extended_by_formula"])


def test_a_context_group_past_the_budget_is_compiled_smaller_and_extended():
    """tiny-llama on tp 2 x cp 4 x dp 2: compiled whole at cp = 4, and with a 4-device budget at
    cp = 2 on half the sequence (the same tokens per device and K/V chunk per ring step),
    extended by formula (attention x 2, ring x 3). The two microbatch times agree."""
    cfg = resolve_model("tiny-llama").replace(n_layers=1, batch=8, seq=128, q_block=16,
                                              kv_block=16)
    layout = parse_layout("tp-pp:tp=2,pp=1,cp=4,dp=2,microbatches=2")
    whole = project_composed(cfg, layout, HW).to_dict()
    small = project_composed(cfg, layout, HW, budget=4).to_dict()
    assert "128 positions" in whole["compiled"] and "64 positions" in small["compiled"]
    assert not any("cp=2" in e for e in whole["extended_by_formula"])
    assert any("compiled at cp=2" in e and "x 3" in e for e in small["extended_by_formula"])
    w, s = whole["projected"], small["projected"]
    att_w, att_s = (r["compute_breakdown"]["attention_seconds"] for r in (w, s))
    assert att_w > 0 and att_s == pytest.approx(att_w, rel=0.01)  # the blocks that run at cp=4
    assert s["microbatch_seconds"] == pytest.approx(w["microbatch_seconds"], rel=0.03)
    assert s["microbatch_compute_seconds"] == pytest.approx(w["microbatch_compute_seconds"],
                                                            rel=0.03)


def test_uneven_stages_are_composed_from_the_heaviest_and_refused_by_the_runtime():
    cfg = resolve_model("tiny-llama").replace(n_layers=3, batch=8)
    layout = parse_layout("tp-pp:tp=2,pp=2,dp=2,microbatches=2")
    d = project(cfg, layout, HW, mode="train").to_dict()
    assert "(2 layers" in d["compiled"]
    assert any("uneven stages: 3 layers" in e for e in d["extended_by_formula"])
    with pytest.raises(ValueError, match="n_layers=3 is not divisible"):
        layout.validate(cfg)  # what `helix train` checks: the runtime splits layers evenly


def test_an_expert_group_past_the_budget_is_a_one_line_error_before_compiling():
    """With ep the stage holds one expert-parallel group whole (its all-to-all is read off the
    program), so tp x cp x (ep / cp) devices past the budget are refused."""
    cfg = resolve_model("tiny-mixtral").replace(batch=8)
    layout = parse_layout("tp-pp:tp=2,pp=2,cp=2,dp=4,ep=8,microbatches=2")
    with pytest.raises(ValueError, match=r"tp x cp x ep/cp ranks pass the 8 devices"):
        project_composed(cfg, layout, HW, budget=8)
    check_projection(cfg, layout, "train", "shard_map")  # 16 devices: within the default 64
