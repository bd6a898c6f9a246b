"""Training steps as data-parallel trainers run them: each data replica accumulates its own
gradients over the batch chunks and the replicas reduce once per step; and AdamW's weight decay
by what each parameter is."""

import chex
import jax
import numpy as np
import optax
import pytest

from helix_jax import testing
from helix_jax.config import resolve_model
from helix_jax.layouts import parse_layout
from helix_jax.model import Sharded, param_shapes
from helix_jax.train import compile_train_step, decay_mask, train_step_fn

CFG = resolve_model("tiny-dense").replace(batch=64, seq=8)


def _data_groups(spec: str) -> set[frozenset[int]]:
    """The replica groups of the layout's data axes (HLO partition ids are mesh positions)."""
    layout = parse_layout(spec)
    ids = np.arange(layout.devices).reshape(layout.mesh_shape)
    data = [layout.axis_names.index(a) for a in layout.mesh_axes("batch")]
    rest = [i for i in range(ids.ndim) if i not in data]
    flat = ids.transpose(rest + data).reshape(-1, int(np.prod([ids.shape[i] for i in data])))
    return {frozenset(map(int, g)) for g in flat}


def _gradient_reductions(spec: str, chunks: int) -> tuple[int, int]:
    """(executions, bytes) per step of the non-scalar collectives over the data replicas: the
    gradient reductions (the scalar loss is summed per chunk, as it must be)."""
    from helix_jax.analysis import collectives

    sharded = Sharded.build(CFG, parse_layout(spec), batch_chunks=chunks)
    data = _data_groups(spec)
    runs = total = 0
    for c in collectives(compile_train_step(sharded).as_text()):
        arrays = [s for s in c.operand_shapes if s != ()]  # float32 gradients
        if c.replica_groups and {frozenset(g) for g in c.replica_groups} <= data and arrays:
            runs += c.trip_count
            total += c.trip_count * sum(4 * int(np.prod(s)) for s in arrays)
    return runs, total


@pytest.mark.parametrize("spec", ["dp:dp=8", "helix:m=2,n=2,dp=4"])
def test_gradients_are_reduced_once_per_step_whatever_the_chunks(spec):
    one, eight = _gradient_reductions(spec, 1), _gradient_reductions(spec, 8)
    assert eight == one
    # each device's shard of every parameter's gradient (float32) is summed over the replicas once
    sharded = Sharded.build(CFG, parse_layout(spec))
    shard_bytes = sum(4 * int(np.prod(
        a.sharding.shard_shape(a.shape))) for a in jax.tree.leaves(sharded.abstract_params()))
    assert one[1] == shard_bytes
    assert 0 < one[0] <= len(jax.tree.leaves(param_shapes(CFG)))


def test_accumulated_data_parallel_step_equals_single():
    """8 chunks accumulated per replica and reduced once: the same update as one batch on one
    device (plain SGD, lr 1: new params = params - mean gradient)."""
    params = Sharded.build(CFG, parse_layout("single")).init(0)
    x = jax.random.normal(jax.random.key(1), (CFG.batch, CFG.seq, CFG.d_model))
    t = jax.random.normal(jax.random.key(2), (CFG.batch, CFG.seq, CFG.d_model))
    out = {}
    for spec, chunks in (("single", 1), ("dp:dp=4", 8), ("helix:m=2,n=2,dp=4", 4)):
        sharded = Sharded.build(CFG, parse_layout(spec), batch_chunks=chunks)
        tx = optax.sgd(1.0)
        placed = sharded.place(params)
        new, _, metrics = jax.jit(train_step_fn(sharded, tx))(placed, tx.init(placed), x, t)
        out[spec] = jax.device_get((new, metrics["loss"]))
    for spec in ("dp:dp=4", "helix:m=2,n=2,dp=4"):
        chex.assert_trees_all_close(out[spec][0], out["single"][0], rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(out[spec][1], out["single"][1], rtol=1e-5)


@pytest.mark.parametrize("model", ["tiny-dense", "tiny-moe"])
def test_weight_decay_takes_matrices_only(model):
    cfg = resolve_model(model).replace(vocab=64)
    mask = decay_mask(param_shapes(cfg))
    decayed = {testing._path_name(p) for p, v in jax.tree_util.tree_leaves_with_path(mask) if v}
    kept = {testing._path_name(p) for p, v in jax.tree_util.tree_leaves_with_path(mask) if not v}
    ffn = ("moe.router", "moe.w1", "moe.w2") if cfg.is_moe else ("mlp.w1", "mlp.w2")
    assert decayed == {"embed.table", "head.w",
                       *(f"layers.attn.{w}" for w in ("wq", "wk", "wv", "wo")),
                       *(f"layers.{w}" for w in ffn)}
    biases = ("moe.b1", "moe.b2") if cfg.is_moe else ("mlp.b1", "mlp.b2")
    assert kept == {"final_ln.scale", "final_ln.bias",
                    *(f"layers.{n}.{k}" for n in ("ln1", "ln2") for k in ("scale", "bias")),
                    *(f"layers.{b}" for b in biases)}


def test_an_unknown_parameter_has_no_silent_decay_rule():
    with pytest.raises(ValueError, match="no weight-decay rule for 'gamma'"):
        decay_mask({"layers": {"norm": {"gamma": np.zeros(3)}}})
