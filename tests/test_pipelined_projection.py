"""Pipelined training steps projected from the program the runtime runs (GPipe, 1F1B and
interleaved 1F1B compiled whole, `analysis/costmodel/pipelined.py`) against the composed
projection of the same layouts (one stage compiled, the schedule by formula)."""

import jax
import numpy as np
import pytest

from helix_jax.analysis.costmodel.hardware import HARDWARE
from helix_jax.analysis.costmodel.project import composes, project
from helix_jax.config import resolve_model
from helix_jax.layouts import parse_layout
from helix_jax.parallel.schedule import build, replay
from helix_jax.params import param_shapes

HW = HARDWARE["dgx-h100"]
# Mid-size: a chunk's work is matmul-bound (d_model 1024), 8 layers; no vocabulary, so nothing
# outside the stages holds a matmul. One attention block per sequence (the mask applied, not
# skipped), so the forward's matmul FLOPs per token and layer have a closed form.
CFG = resolve_model("tiny-dense").replace(n_layers=8, d_model=1024, n_heads=8, head_dim=128,
                                          d_ff=4096, batch=16, seq=512)
TP, M = 2, 8
CASES = {"gpipe": (2, "schedule=gpipe"), "1f1b": (2, "schedule=1f1b"),
         "interleaved": (2, "schedule=1f1b,virtual=2"), "1f1b-pp4": (4, "schedule=1f1b")}
ONE_F_ONE_B = ["1f1b", "interleaved", "1f1b-pp4"]


def _layout(name: str):
    """Sequence-parallel, as Megatron runs TP: each tensor rank then sends its own slice of a
    microbatch's activations between stages, the bytes the composed projection prices; without
    it helix's runtime sends the whole activation from every tensor rank, where the composed
    formula prices Megatron-LM's scatter-gather (each rank's slice)."""
    p, options = CASES[name]
    return parse_layout(f"tp-pp:tp={TP},pp={p},microbatches={M},{options},sp=true")


@pytest.fixture(scope="module")
def projections() -> dict:
    """(compiled whole, composed) projection JSON of each case."""
    return {name: tuple(project(CFG, _layout(name), HW, mode="train", composed=c).to_dict()
                        for c in (False, True)) for name in CASES}


@pytest.mark.parametrize("p, M, V", [(2, 8, 1), (4, 8, 1), (2, 8, 2), (4, 16, 4), (3, 7, 1)])
def test_replay_finishes_in_the_priced_microbatch_times(p, M, V):
    """F = 1, B = 2 per chunk: Megatron's order takes (M + (p - 1)/V) microbatch times of 3V;
    the runtime's lockstep ticks take longer (a tick running F beside B lasts B). With F = B = 1
    every lockstep tick lasts 1, the table's T ticks, which 1F1B's order (V = 1) also takes."""
    t = build(p, M, V)
    one, two = np.ones((p, V)), 2 * np.ones((p, V))
    assert replay(t, one, two) == pytest.approx(3 * V * (M + (p - 1) / V))
    assert replay(t, one, two, lockstep=True) > replay(t, one, two) * 1.1
    assert replay(t, one, one, lockstep=True) == t.ticks
    if V == 1:
        assert replay(t, one, one) == t.ticks


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_and_composed_projections_agree(projections, name):
    """Per-device FLOPs within 5%; the chunks' work (matmul and attention kernels and the tensor-
    parallel collectives) along the schedule within 5% of the composed pipeline's; the step
    within 5%: the compiled program's, in Megatron's order and without what the runtime moves
    around the chunks (priced apart, `runtime_plumbing_seconds`), against the composed one."""
    whole, composed = projections[name]
    assert whole["flops_per_device"] == pytest.approx(composed["flops_per_device"], rel=0.05)
    c = composed["projected"]
    work = (c["compute_breakdown"]["matmul_seconds"] + c["compute_breakdown"]["attention_seconds"]
            + c["tensor_comm_seconds"])
    if name == "gpipe":  # the program's own sends and collectives are in its shared work
        work += c["pipeline_send_seconds"]
        compiled = whole["pipeline"]["shared_seconds"]
    else:
        compiled = whole["pipeline"]["chunk_work_pipeline_seconds"]
    assert compiled == pytest.approx(work, rel=0.05)
    assert whole["projected"]["step_seconds"] == pytest.approx(c["step_seconds"], rel=0.05)
    plumbing = whole["pipeline"]["runtime_plumbing_seconds"]
    assert plumbing > 0.05 * c["step_seconds"]  # the runtime's stash and sums: read, set apart
    if name != "gpipe":  # lockstep ticks cost more than Megatron's order, plumbing aside
        assert whole["pipeline"]["lockstep_seconds"] > whole["projected"]["step_seconds"] + plumbing


@pytest.mark.parametrize("name", ONE_F_ONE_B)
def test_branches_are_weighted_by_the_tick_table(projections, name):
    """Each conditional's work branch counts M V times of the T ticks: the step's FLOPs are M V
    chunk forwards and backwards, a chunk's forward being the closed form of its L / (p V) layers
    on one microbatch (tensor-parallel: / tp) and its backward twice that."""
    whole, _ = projections[name]
    P, V = CASES[name][0], _layout(name).options["virtual"]
    t = build(P, M, V)
    D, Hd, F, S = CFG.d_model, CFG.n_heads * CFG.head_dim, CFG.d_ff, CFG.seq
    per_token = 8 * D * Hd + 4 * S * Hd + 4 * D * F
    chunk = per_token * (CFG.batch // M) * S * CFG.n_layers // (P * V) / TP
    pipe = whole["pipeline"]
    assert pipe["forward_chunk_flops"] == pytest.approx(chunk, rel=1e-9)
    assert pipe["backward_chunk_flops"] == pytest.approx(2 * chunk, rel=1e-9)
    assert whole["flops_per_device"] == pytest.approx(M * V * 3 * chunk, rel=1e-9)
    taken = [w[1] for w in pipe["branch_weights"].values()]  # forward, backward, loss head
    assert sum(abs(w - M * V / t.ticks) < 1e-12 for w in taken) == 2, taken
    assert sum(abs(w - 1 / V) < 1e-12 for w in taken) >= 1, taken
    assert pipe["async_seconds"] == whole["projected"]["step_seconds"]
    assert pipe["lockstep_seconds"] > pipe["async_seconds"]


@pytest.mark.parametrize("name", ONE_F_ONE_B)
def test_collectives_are_counted_as_the_ticks_run(projections, name):
    """Two collective-permutes per tick (forward one stage on, cotangent one back), every tick;
    per layer two sequence-parallel all-gathers and two reduce-scatters in a forward and as many
    in a backward, M V times."""
    whole, _ = projections[name]
    P = CASES[name][0]
    t = build(P, M, _layout(name).options["virtual"])
    rows = whole["collectives"]
    assert any(r["op"] == "collective-permute" and r["count"] == 2 * t.ticks for r in rows), rows
    for op in ("all-gather", "reduce-scatter"):
        assert sum(r["count"] for r in rows if r["op"] == op) == 4 * M * CFG.n_layers // P, rows
    # interleaved: each stacked parameter moves into the run-time order and its gradient back,
    # one all-to-all each (no all-gather of the stages' layers: counted above)
    moves = 2 * len(jax.tree.leaves(param_shapes(CFG)["layers"])) if name == "interleaved" else 0
    assert sum(r["count"] for r in rows if r["op"] == "all-to-all") == moves, rows


def test_one_f_one_b_keeps_fewer_activations_than_gpipe_in_the_compiled_programs(projections):
    """The compiled steps' temporaries (pp = 2, M = 4p): GPipe's exceed 1F1B's by at least half of what
    the activation formula's in-flight counts (M against p) say."""
    gpipe, one = (projections[n][0]["pipeline"] for n in ("gpipe", "1f1b"))
    assert (gpipe["in_flight_microbatches_formula"], one["in_flight_microbatches_formula"]) == (
        M, CASES["1f1b"][0])
    formula = (gpipe["activations_in_flight_formula_bytes"]
               - one["activations_in_flight_formula_bytes"])
    assert gpipe["compiled_temp_bytes"] - one["compiled_temp_bytes"] >= 0.5 * formula


def test_gpipe_runs_every_stage_every_step(projections):
    """GPipe's scan has no conditional: each stage computes all M + p - 1 steps, bubble included,
    so its FLOPs are (M + p - 1) / M of 1F1B's (which skips its idle ticks) on the same layout."""
    p = CASES["gpipe"][0]
    gpipe, one = (projections[n][0]["flops_per_device"] for n in ("gpipe", "1f1b"))
    assert gpipe == pytest.approx(one * (M + p - 1) / M, rel=1e-9)


@pytest.mark.parametrize("spec, composed", [
    ("tp-pp:tp=2,pp=2,microbatches=8,schedule=1f1b,virtual=2", False),
    ("tp-pp:tp=2,pp=3,microbatches=8", True),  # 8 layers over 3 stages: uneven, composed
    ("tp-pp:tp=2,pp=2,microbatches=8,schedule=1f1b,virtual=3", True),
    ("tp-pp:tp=2,pp=2,dp=2,microbatches=4", True),  # data replicas: the distributed optimizer
])
def test_which_pipelines_are_compiled_whole(spec, composed):
    assert composes(parse_layout(spec), "train", cfg=CFG) is composed
    with pytest.raises(ValueError, match="compiled whole, not composed"):
        composes(parse_layout("tp-pp:tp=2,pp=1"), "train", composed=True)


def test_a_whole_pipelines_memory_estimate_holds_its_in_flight_microbatches(projections):
    """The GPU estimate of a stage compiled whole counts the stage's layers for the microbatches
    its schedule holds at once: GPipe all M, 1F1B what the table holds (`memory.in_flight`)."""
    from helix_jax.analysis.costmodel.memory import in_flight

    act = {name: projections[name][0]["memory"]["activations_bytes"]
           for name in ("gpipe", "1f1b")}
    assert act["gpipe"] > 0
    assert act["gpipe"] / act["1f1b"] == pytest.approx(
        in_flight("gpipe", 2, M, 1) / in_flight("1f1b", 2, M, 1))
