"""Megatron TP x GPipe PP against the plain sequential model, and its collectives."""

import chex
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from helix_jax import testing
from helix_jax.analysis.costmodel.hardware import HARDWARE
from helix_jax.analysis.costmodel.project import project
from helix_jax.analysis.costmodel.topology import intra_node_axes, node_of
from helix_jax.comm import Comm
from helix_jax.config import resolve_model
from helix_jax.layouts import parse_layout
from helix_jax.parallel.pipeline import gpipe
from tests.helpers import compiled_collectives

CFG = resolve_model("tiny-dense", n_layers=4, batch=16)
TOL = 1e-5


def toy_pipeline(pp: int, microbatches: int, L: int = 8, B: int = 16, D: int = 8):
    """gpipe over a stack of tanh(x·W_l) layers against a plain loop: outputs and gradients."""
    layout = parse_layout(f"tp-pp:tp={16 // pp},pp={pp},microbatches={microbatches}")
    mesh, comm = layout.make_mesh(), Comm(layout)
    k1, k2 = jax.random.split(jax.random.key(pp * 10 + microbatches))
    w = jax.random.normal(k1, (L, D, D)) / D**0.5
    x = jax.random.normal(k2, (B, D))

    def piped(w, x):
        def body(w_local, x):  # w_local: this stage's L/pp layers
            def stage(h, comm):
                def layer(h, wl):
                    h = jnp.tanh(h @ wl)
                    return h, {"mean": h.mean()}  # a per-layer stat, like the MoE's
                return jax.lax.scan(layer, h, w_local)
            y, stats = gpipe(stage, x, comm)
            return y, stats["mean"]
        return jax.shard_map(body, mesh=mesh, in_specs=(P("stage"), P()),
                             out_specs=(P(), P("stage")))(w, x)

    def sequential(w, x):
        means = []
        for layer in range(L):
            x = jnp.tanh(x @ w[layer])
            means.append(x.reshape(microbatches, -1).mean(1).sum())  # summed over microbatches
        return x, jnp.stack(means)

    def loss(f):
        return lambda w, x: (lambda y, m: (y**2).sum() + m.sum())(*f(w, x))

    (y_p, m_p), (y_s, m_s) = jax.jit(piped)(w, x), sequential(w, x)
    g_p = jax.jit(jax.grad(loss(piped), argnums=(0, 1)))(w, x)
    g_s = jax.grad(loss(sequential), argnums=(0, 1))(w, x)
    return (y_p, m_p, g_p), (y_s, m_s, g_s)


@pytest.mark.parametrize("pp", [2, 4])
@pytest.mark.parametrize("microbatches", [1, 2, 4, 8])
def test_gpipe_matches_a_plain_loop(pp, microbatches):
    piped, plain = toy_pipeline(pp, microbatches)
    chex.assert_trees_all_equal_shapes(piped, plain)
    chex.assert_trees_all_close(piped, plain, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("spec", ["tp-pp", "tp-pp:tp=4,pp=4,microbatches=8",
                                  "tp-pp:tp=8,pp=2,microbatches=1"])
def test_tp_pp_model_matches_sequential(spec):
    testing.assert_layout_equivalent(CFG, spec, rtol=TOL)


def test_sequence_parallel_matches_sequential():
    testing.assert_layout_equivalent(CFG, "tp-pp:sp=true", rtol=TOL)


def hlo_collectives(spec):
    return compiled_collectives(CFG, spec)


B, S, D, L = CFG.batch, CFG.seq, CFG.d_model, CFG.n_layers


def test_tp_pp_collectives():
    pp, tp, M = 2, 8, 4
    steps = M + pp - 1  # GPipe: every stage runs every step
    expected = {
        # per layer: all-reduce of the attention and of the FFN partials over the TP group of 8
        ("all-reduce", tp, steps * L // pp, (B // M, S, D)): 2,
        # per step: the microbatch activation passed to the next stage
        ("collective-permute", 2, steps, (B // M, S, D)): 1,
        # once: the last stage's output sent to every stage
        ("all-reduce", pp, 1, (B, S, D)): 1,
    }
    assert hlo_collectives("tp-pp") == expected


def test_sequence_parallel_turns_all_reduces_into_pairs():
    pp, tp, M = 2, 8, 4
    steps = M + pp - 1
    expected = {
        ("reduce-scatter", tp, steps * L // pp, (B // M, S, D)): 2,
        ("all-gather", tp, steps * L // pp, (B // M, S // tp, D)): 2,
        ("collective-permute", 2, steps, (B // M, S // tp, D)): 1,
        ("all-reduce", pp, 1, (B, S // tp, D)): 1,
    }
    assert hlo_collectives("tp-pp:sp=true") == expected


def test_tp_groups_cross_nodes_unless_placed_otherwise():
    paper = HARDWARE["h100-paper"]  # 4 GPUs per node
    default = parse_layout("tp-pp")  # stage x tensor, TP innermost: a TP group spans 2 nodes
    assert len({node_of(default, paper)(p) for p in range(8)}) == 2
    assert intra_node_axes(default, paper) == ()
    inner = parse_layout("tp-pp:place=stage-inner")  # the 2 stages of a TP rank share a node
    assert intra_node_axes(inner, paper) == ("stage",)
    assert len({node_of(inner, paper)(p) for p in range(8)}) == 4
    assert intra_node_axes(default, HARDWARE["dgx-h100"]) == ("tensor",)  # 8 GPUs per node


@pytest.mark.parametrize("spec, overrides, words", [
    ("tp-pp:microbatches=3", {}, r"batch per data replica \(16\) is not divisible by microbatches=3"),
    ("tp-pp:tp=4,pp=4", dict(n_layers=2), r"n_layers=2 is not divisible by the 4 shards of 'layers'"),
    ("tp-pp:tp=8,pp=4", {}, None),
])
def test_clear_errors(spec, overrides, words):
    cfg = CFG.replace(**overrides)
    if words is None:  # tp*pp = 32 on a 16-device machine
        with pytest.raises(ValueError, match="32-device mesh .* but 16 devices were given"):
            parse_layout(spec).validate(cfg, devices=16)
    else:
        with pytest.raises(ValueError, match=words):
            parse_layout(spec).validate(cfg)



@pytest.mark.parametrize("model", ["tiny-dense", "tiny-llama"])
def test_training_step_has_megatrons_four_tensor_all_reduces_per_layer(model):
    """Without sp each layer's input enters the tensor shards once for all of its first matmuls
    (q, k, v; w1 and w3 of SwiGLU), so the backward sums the input's gradient once per block
    (Megatron's f operator), not once per matmul: per layer 2 all-reduces of [B, S, D] in the
    forward and 2 in the backward, each of one activation's bytes; plus, with a vocabulary, the
    embedding's forward sum and the head's input-gradient sum. Read off the program the
    training projection compiles and prices."""
    cfg = resolve_model(model)
    activation = cfg.batch * cfg.seq * cfg.d_model * 4  # f32 [B, S, D]
    rows = project(cfg, parse_layout("tp-pp:tp=2,pp=1,microbatches=1"), HARDWARE["dgx-h100"],
                   mode="train").collectives
    big = [r for r in rows if r["op"] == "all-reduce" and r["group_size"] == 2
           and r["payload_bytes_per_device"] >= activation]
    assert {r["payload_bytes_per_device"] for r in big} == {activation}
    assert sum(r["count"] for r in big) == 4 * cfg.n_layers + (2 if cfg.vocab else 0)
