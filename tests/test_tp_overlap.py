"""tp_overlap=true runs: sequence parallelism's all-gather -> matmul and matmul -> reduce-scatter
become rings of collective-permutes beside partial matmuls (collective matmuls), with the same
outputs, gradients and losses as without."""

import re
from collections import Counter

import pytest

from helix_jax.analysis import collectives, matmul_flops
from helix_jax.config import resolve_model
from helix_jax.layouts import parse_layout
from helix_jax.model import Sharded
from helix_jax.testing import assert_trees_close, run_layout
from tests.cli_run import helix_here


@pytest.mark.parametrize("model, spec", [("tiny-llama", "tp-pp:tp=4,pp=1,sp=true"),
                                         ("tiny-dense", "tp-pp:tp=2,pp=2,sp=true,dp=2")])
def test_collective_matmuls_equal_the_plain_collectives(model, spec):
    cfg = resolve_model(model)
    plain, overlap = run_layout(cfg, spec), run_layout(cfg, spec + ",tp_overlap=true")
    assert_trees_close({"y": plain["y"]}, {"y": overlap["y"]}, 1e-5)
    assert_trees_close(plain["grads"], overlap["grads"], 1e-5, "gradient ")


def _program(cfg, spec: str) -> str:
    sharded = Sharded.build(cfg, parse_layout(spec))
    return sharded.forward_fn().lower(*sharded.abstract_inputs()).compile().as_text()


def test_each_layer_is_four_rings_of_t_minus_1_permutes_and_no_gathers():
    """tiny-dense, tp = 4 with sp: per layer, the attention's and the FFN's input gather and
    output reduce-scatter are each t - 1 = 3 collective-permutes of one sequence chunk
    [B/M, S/t, D] around the tensor group (+1 for gathers, -1 for reduce-scatters), in the layer
    loop (M microbatches x L layers runs); no all-gather or reduce-scatter of activations is left,
    and the matmul FLOPs are those of the plain program (the same products, chunk by chunk)."""
    cfg, t, M = resolve_model("tiny-dense"), 4, 4
    spec = f"tp-pp:tp={t},pp=1,sp=true,microbatches={M}"
    plain, overlap = _program(cfg, spec), _program(cfg, spec + ",tp_overlap=true")
    chunk = (cfg.batch // M, cfg.seq // t, cfg.d_model)
    up = tuple((i, (i + 1) % t) for i in range(t))
    down = tuple((i, (i - 1) % t) for i in range(t))
    got = Counter((c.op, c.operand_shapes[0], c.source_target_pairs, c.trip_count)
                  for c in collectives(overlap) if c.operand_shapes[0] == chunk)
    runs = M * cfg.n_layers
    assert got == Counter({("collective-permute", chunk, up, runs): 2 * (t - 1),
                           ("collective-permute", chunk, down, runs): 2 * (t - 1)})
    plain_ops = Counter(c.op for c in collectives(plain) if c.operand_shapes[0][1:] in (
        chunk[1:], (cfg.seq, cfg.d_model)))
    assert plain_ops["all-gather"] == 2 and plain_ops["reduce-scatter"] == 2
    assert not [c for c in collectives(overlap) if c.op in ("all-gather", "reduce-scatter")
                and c.trip_count == runs]
    assert matmul_flops(overlap)["flops"] == matmul_flops(plain)["flops"]
    # each ring step's matmul sits between two permutes of the ring in program order
    body = overlap[overlap.index("collective-permute"):]
    between = re.split(r"collective-permute\(", body)[1:2 * (t - 1)]
    assert all(re.search(r"\bdot\(|fusion\(", b) for b in between)


def _losses(out: str) -> list[str]:
    return re.findall(r"^step\s+\d+\s+loss\s+(\S+)", out, flags=re.M)


def test_helix_train_runs_it_with_the_same_losses():
    base = ["train", "--model", "tiny-llama", "--steps", "3", "--no-progress", "--layout"]
    spec = "tp-pp:tp=2,pp=1,sp=true,microbatches=2"
    plain = helix_here(base + [spec])
    overlap = helix_here(base + [spec + ",tp_overlap=true"])
    assert plain.returncode == 0 and overlap.returncode == 0, overlap.stderr
    assert len(_losses(plain.stdout)) == 3
    for a, b in zip(_losses(plain.stdout), _losses(overlap.stdout), strict=True):
        assert float(a) == pytest.approx(float(b), rel=1e-5)
    refused = helix_here(base + ["tp-pp:tp=2,pp=1,microbatches=2,tp_overlap=true"])
    assert refused.returncode != 0 and "add sp=true" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_a_whole_program_projection_says_it_prices_the_plain_collectives():
    from helix_jax.analysis.costmodel.hardware import HARDWARE
    from helix_jax.analysis.costmodel.project import project

    cfg = resolve_model("tiny-dense")
    r = project(cfg, parse_layout("tp-pp:tp=4,pp=1,sp=true,tp_overlap=true"),
                HARDWARE["dgx-h100"]).to_dict()
    assert "priced exposed" in r["compiled"] and "collective matmuls" in r["compiled"]
    plain = project(cfg, parse_layout("tp-pp:tp=4,pp=1,sp=true"), HARDWARE["dgx-h100"]).to_dict()
    assert r["projected"]["step_seconds"] == plain["projected"]["step_seconds"]
    assert "tp_overlap" not in plain["compiled"]
