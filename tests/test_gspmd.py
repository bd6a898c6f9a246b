"""The gspmd partitioner: the same modules under jax.jit with the layout's shardings, XLA choosing
the collectives. Outputs against the float64 oracle, gradients against `single`, what XLA emits
(pinned, so a jax upgrade that changes it is noticed), the comparison and the refusals."""

import json
from collections import Counter

import jax
import numpy as np
import pytest

from helix_jax import cli, npz, testing
from helix_jax.analysis import load_hardware
from helix_jax.analysis.costmodel.project import project
from helix_jax.analysis.costmodel.sites import collective_sites
from helix_jax.analysis.hlo.collectives import parse_replica_groups
from helix_jax.analysis.partitioners import project_both
from helix_jax.config import resolve_model
from helix_jax.layouts import parse_layout
from helix_jax.model import Sharded, random_input
from tests import reference_np
from tests.helpers import random_params, rel_err


@pytest.fixture(scope="module", autouse=True)
def fresh_compiles():
    """Compile this module's programs fresh, not from jax's persistent cache (conftest sets one):
    XLA:CPU deadlocked in the collectives of the gspmd FSDP gradient program when it loaded it
    from that cache (jax 0.10.2), while the same program compiled fresh ran (docs/partitioners.md)."""
    from jax.experimental.compilation_cache import compilation_cache

    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    yield
    jax.config.update("jax_enable_compilation_cache", enabled)
    compilation_cache.reset_cache()


DENSE = resolve_model("tiny-dense")  # B=16, S=32, D=128, H=16, d=8, F=512, 2 layers
MOE = resolve_model("tiny-moe", n_layers=2, capacity_factor=16.0)  # no drops: the oracle has no capacity
HW = load_hardware("h100-paper")
L, B, S, D = DENSE.n_layers, DENSE.batch, DENSE.seq, DENSE.d_model


def oracle(cfg, run: dict) -> np.ndarray:
    return reference_np.forward(npz.params_to_flat(run["params"]), run["x"],
                                json.loads(cfg.to_json()))


@pytest.mark.parametrize("cfg, spec", [
    (DENSE, "dp"), (DENSE, "dp:fsdp=true"), (DENSE, "tp-pp:pp=1"),
    (DENSE, "tp-pp:pp=1,sp=true"), (DENSE, "helix"), (DENSE, "helix:core=seq_a2a"),
    (DENSE, "helix:core=qk_gather"), (MOE, "ep"), (MOE, "helix-ep"),
], ids=lambda v: v if isinstance(v, str) else v.name)
def test_outputs_match_the_oracle_and_gradients_match_single(cfg, spec):
    got = testing.assert_layout_equivalent(cfg, spec, partitioner="gspmd")
    assert reference_np.relative_error(oracle(cfg, got), got["y"]) <= 1e-4
    if cfg.is_moe:
        assert np.array_equal(got["stats"]["dropped"], np.zeros(cfg.n_layers))


def test_moe_drops_the_same_assignments_as_shard_map():
    """At the default capacity both partitioners fill the buffers of each source shard (ep:
    one per device) the same way, so they drop the same assignments."""
    cfg = resolve_model("tiny-moe")
    runs = {}
    for partitioner in ("shard_map", "gspmd"):
        sharded = Sharded.build(cfg, parse_layout("ep"), partitioner=partitioner)
        y, stats = sharded.forward_fn()(sharded.place(random_params(cfg)), random_input(cfg, 0))
        runs[partitioner] = (np.asarray(y), np.asarray(stats["dropped"]))
    assert runs["shard_map"][1].sum() > 0  # capacity 1.25 drops some
    np.testing.assert_array_equal(runs["shard_map"][1], runs["gspmd"][1])
    assert rel_err(runs["shard_map"][0], runs["gspmd"][0]) < 1e-5


def test_cli_forward_passes_the_float64_oracle(tmp_path, capsys):
    out = tmp_path / "f.npz"
    assert cli.main(["forward", "--model", "tiny-moe", "--layout", "helix-ep", "--partitioner",
                     "gspmd", "--capacity-factor", "16", "--out", str(out), "--repeat", "0"]) == 0
    assert "partitioner gspmd" in capsys.readouterr().out
    params, x, y, cfg = reference_np.load_npz(out)
    assert reference_np.relative_error(reference_np.forward(params, x, cfg), y) <= 1e-4


def sites(cfg, spec: str) -> Counter:
    """(op, mesh axes, executions, first operand shape) -> how many, in XLA's program."""
    sharded = Sharded.build(cfg, parse_layout(spec), partitioner="gspmd")
    hlo = sharded.forward_fn().lower(*sharded.abstract_inputs()).compile().as_text()
    from helix_jax.analysis.hlo.collectives import collectives

    shapes = {c.name: c.operand_shapes[0] for c in collectives(hlo)}
    return Counter((s["op"], tuple(s["axes"]), s["count"], shapes[s["name"]])
                   for s in collective_sites(hlo, parse_layout(spec), HW))


def test_xla_splits_the_helix_attention_output_sum_and_keeps_the_score_all_reduce():
    # XLA chose score_psum's strategy for QKᵀ on its own (partial scores [B, H/n, S, S] summed
    # over the 4 devices of a head group); the attention output, contracted over heads and head
    # dim, is summed in two all-reduces (over dim, then head) where the hand-written program
    # has one over all 16; the FFN output is one all-reduce over all 16.
    expected = {
        ("all-reduce", ("dim",), L, (B, 4, S, S)): 1,
        ("all-reduce", ("dim",), L, (B, S, D)): 1,
        ("all-reduce", ("head",), L, (B, S, D)): 1,
        ("all-reduce", ("head", "dim"), L, (B, S, D)): 1,
    }
    assert sites(DENSE, "helix") == expected
    assert sites(DENSE, "helix:core=qk_gather") == expected  # the same program


def test_xla_finds_seq_a2a_from_the_query_sequence_constraint():
    # Whole-sequence blocks: q to the sequence split and the output back by all-to-all (CPU
    # lowers them to tuples of 4 [B, S/4 or S, ...] pieces), k and v gathered to the full head dim.
    assert sites(DENSE, "helix:core=seq_a2a") == {
        ("all-to-all", ("dim",), L, (B, 1, 8, 4, 2)): 1,
        ("all-to-all", ("dim",), L, (B, 8, 4, 1, 2)): 1,
        ("all-gather", ("dim",), L, (B, S, 4, 2)): 2,
        ("all-reduce", ("dim",), L, (B, S, D)): 1,
        ("all-reduce", ("head",), L, (B, S, D)): 1,
        ("all-reduce", ("head", "dim"), L, (B, S, D)): 1,
    }


def test_xla_tensor_parallel_and_sequence_parallel():
    # TP=8: one all-reduce of [B, S, D] after attention and one after the FFN, per layer.
    assert sites(DENSE, "tp-pp:pp=1") == {("all-reduce", ("tensor",), L, (B, S, D)): 2}
    # SP: XLA all-reduces the whole [B, S, D] and slices (no reduce-scatter on XLA:CPU), and
    # gathers the sequence once per LayerNorm.
    assert sites(DENSE, "tp-pp:pp=1,sp=true") == {
        ("all-reduce", ("tensor",), L, (B, S, D)): 2,
        ("all-gather", ("tensor",), L, (B, S // 8, D)): 2,
    }


def test_comparison_flags_what_the_layout_does_not_need():
    r = project_both(DENSE, parse_layout("helix"), HW)
    c = r["comparison"]
    assert r["shard_map"]["partitioner"] == "shard_map" and r["gspmd"]["partitioner"] == "gspmd"
    assert c["same_batch_chunks"]
    flagged = sorted((e["op"], tuple(e["axes"]), e["count"]) for e in c["extra"])
    assert flagged == [("all-reduce", ("dim",), L), ("all-reduce", ("head",), L)]
    assert all("Attention._out" in e["source"] and "bshk,hkD->bsD" in e["op_name"]
               for e in c["extra"])
    assert [(m["op"], m["axes"]) for m in c["missing"]] == [("all-reduce", ["head", "dim"])]
    assert c["qk"]["gspmd"]["ops"] == ["all-reduce"]
    assert c["qk"]["gspmd"]["bytes_per_device"] == c["qk"]["shard_map"]["bytes_per_device"]
    assert c["gspmd"]["flops_per_device"] == c["shard_map"]["flops_per_device"]


def test_project_both_prints_the_side_by_side(capsys):
    assert cli.main(["project", "--model", "tiny-dense", "--layout", "dp", "--partitioner",
                     "both"]) == 0
    out = capsys.readouterr().out
    assert "hand-written (shard_map)" in out and "XLA's (gspmd)" in out
    assert "GSPMD matches" in out


@pytest.mark.parametrize("argv, words", [
    (["forward", "--layout", "tp-pp"], "pipeline (pp=2) runs under --partitioner shard_map only"),
    (["train", "--layout", "tp-pp:tp=4,pp=2,dp=2"], "pipeline (pp=2)"),
    (["project", "--model", "tiny-dense", "--layout", "helix", "--mode", "decode"],
     "runs under --partitioner shard_map only"),
])
def test_unsupported_combinations_are_one_line_errors(capsys, argv, words):
    assert cli.main(argv + ["--partitioner", "gspmd"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("helix: error:") and words in err and "\n" not in err


def test_unsupported_combinations_in_the_api():
    with pytest.raises(ValueError, match="shard_map only"):
        Sharded.build(DENSE, parse_layout("tp-pp"), partitioner="gspmd")
    with pytest.raises(ValueError, match="not one of"):
        Sharded.build(DENSE, parse_layout("helix"), partitioner="pjit")
    with pytest.raises(ValueError, match="shard_map only"):
        Sharded.build(DENSE, parse_layout("kvp"), partitioner="gspmd").step_fn()
    with pytest.raises(ValueError, match="composed"):
        project(resolve_model("paper-dense"), parse_layout("tp-pp:pp=1,tp=8,dp=2"), HW,
                mode="train", partitioner="gspmd")


def test_mesh_axes_replica_groups():
    dim = ((0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11), (12, 13, 14, 15))
    head = ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15))
    assert parse_replica_groups("mesh['axis_0'=1,'axis_1'=1,'axis_2'=4,'axis_3'=4] "
                                "{'axis_3'}") == dim
    assert parse_replica_groups("mesh['axis_0'=1,'axis_2'=4,'axis_3'=4] {'axis_2'}") == head
    # devices numbered by an iota with a transpose: the mesh's first axis runs fastest
    assert parse_replica_groups("mesh['a'=1,'b'=4,'c'=4,'d'=1], device_ids=([4,4]T(1,0)) "
                                "{'b'}") == dim
    # a sub-axis: the middle 4 of an axis of 16 seen as [2, 4, 2]
    assert parse_replica_groups("mesh['x'=16] {'x':(2)4}") == (
        (0, 2, 4, 6), (1, 3, 5, 7), (8, 10, 12, 14), (9, 11, 13, 15))

