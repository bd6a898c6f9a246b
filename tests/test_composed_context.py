"""Composed training projections (pipeline stages and data replicas extended by formula) of
layouts with context and expert parallelism: what the stage compiles (its context ranks and one
expert-parallel group), what is extended (a context group larger than the fake devices, uneven
stages), and the per-device parameters that the memory formula rests on."""

import pytest

from helix_jax import resolve_model
from helix_jax.analysis.costmodel.compose import project_composed, stage_variants
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
    """3 layers on 2 stages, the embedding and loss counted as a layer each (Megatron-Core's
    split): 5 slots in chunks of 3 and 2, so each stage holds 2 layers and one end."""
    cfg = resolve_model("tiny-llama").replace(n_layers=3, batch=8)
    layout = parse_layout("tp-pp:tp=2,pp=2,dp=2,microbatches=2")
    d = project(cfg, layout, HW, mode="train").to_dict()
    assert "(2 layers, with embedding" in d["compiled"]
    assert any("uneven stages: 3 layers and the embedding and loss" in e
               for e in d["extended_by_formula"])
    with pytest.raises(ValueError, match="n_layers=3 is not divisible"):
        layout.validate(cfg)  # what `helix train` checks: the runtime splits layers evenly


@pytest.mark.parametrize("layers, spec, variants", [
    (16, "tp-pp:pp=4,virtual=1", [(4, True)]),  # even: the last stage, n_layers / pp
    (4, "tp-pp:pp=3,virtual=1", [(2, False), (1, True)]),  # 6 slots: 2 per stage
    (4, "tp-pp:pp=3,virtual=2", [(2, False), (1, True)]),  # 6 slots in 6 chunks of 1
    (4, "tp-pp:pp=2,virtual=3", [(2, True)]),  # 6 chunks: both stages hold an end
    (126, "tp-pp:pp=8,virtual=8", [(16, False), (15, True)]),  # Llama 3.1 405B: 128 slots
])
def test_uneven_stage_variants_count_the_embedding_and_loss_as_layers(layers, spec, variants):
    cfg = resolve_model("tiny-llama").replace(n_layers=layers)
    assert stage_variants(cfg, parse_layout(spec)) == variants
    # no vocabulary: the heaviest stage of the most even split
    assert stage_variants(cfg.replace(vocab=0, n_layers=4), parse_layout(spec)) == [
        (-(-4 // (parse_layout(spec).options["pp"] * parse_layout(spec).options["virtual"]))
         * parse_layout(spec).options["virtual"], True)]


def test_a_middle_stage_is_compiled_without_the_model_ends_and_the_slower_sets_the_pace():
    """4 layers on 3 stages: a middle stage of 2 layers (no embedding, no head) and the last of 1
    layer with the head are both compiled, and the composed step runs at the slower."""
    cfg = resolve_model("tiny-llama").replace(n_layers=4, batch=8, seq=32)
    layout = parse_layout("tp-pp:tp=2,pp=3,dp=2,microbatches=4,schedule=1f1b")
    d = project_composed(cfg, layout, HW).to_dict()
    line = next(e for e in d["extended_by_formula"] if e.startswith("uneven stages"))
    assert "2 layers, a middle stage: no embedding or head:" in line
    assert "1 layers, with embedding, LM head and loss:" in line
    middle, last = (float(t.split(": ")[-1].removesuffix(" ms"))
                    for t in line.split("per microbatch ")[1].split("; the slowest")[0].split("; "))
    assert d["projected"]["microbatch_seconds"] * 1e3 == pytest.approx(max(middle, last),
                                                                       rel=1e-3)
    assert ("(2 layers, a middle stage" in d["compiled"]) == (middle >= last)


def test_context_parallelism_composes_with_interleaved_1f1b():
    """cp 2 with pp 2 x virtual 2: the stage compiles its two context ranks (the ring read off
    it), the schedule is interleaved (M + (p - 1) / V microbatch times) and the memory holds
    the in-flight microbatches of the seq / cp tokens a rank keeps."""
    cfg = resolve_model("tiny-llama").replace(n_layers=4, batch=8, seq=64, q_block=16,
                                              kv_block=16)
    layout = parse_layout("tp-pp:tp=2,pp=2,cp=2,dp=2,microbatches=4,schedule=1f1b,virtual=2")
    d = project_composed(cfg, layout, HW).to_dict()
    assert "cp=2" in d["compiled"] and "4 devices" in d["compiled"]
    assert any("interleaved x2: 4.5 microbatch times" in e for e in d["extended_by_formula"])
    p = d["projected"]
    assert p["pipeline_seconds"] == pytest.approx(4.5 * p["microbatch_seconds"])
    assert any(r["op"] == "collective-permute" for r in d["collectives"])  # the K/V ring
    one = project_composed(cfg, parse_layout(
        "tp-pp:tp=2,pp=2,cp=2,dp=2,microbatches=4,schedule=1f1b"), HW).to_dict()
    # the executed interleaved table holds p stage-microbatches of chunks, as 1F1B does
    assert one["memory"]["activations_in_flight_bytes"] == d["memory"][
        "activations_in_flight_bytes"]


def test_an_expert_group_past_the_budget_is_a_one_line_error_before_compiling():
    """With ep the stage holds one expert-parallel group whole (its all-to-all is read off the
    program), so tp x cp x (ep / cp) devices past the budget are refused."""
    cfg = resolve_model("tiny-mixtral").replace(batch=8)
    layout = parse_layout("tp-pp:tp=2,pp=2,cp=2,dp=4,ep=8,microbatches=2")
    with pytest.raises(ValueError, match=r"tp x cp x ep/cp ranks pass the 8 devices"):
        project_composed(cfg, layout, HW, budget=8)
    check_projection(cfg, layout, "train", "shard_map")  # 16 devices: within the default 64
