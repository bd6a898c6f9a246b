"""Data parallelism, FSDP and a data axis composed with the model-parallel layouts."""

from collections import Counter

import jax
import pytest

from helix_jax import testing
from helix_jax.analysis import collectives
from helix_jax.analysis.costmodel.hardware import HARDWARE
from helix_jax.analysis.costmodel.topology import intra_node_axes
from helix_jax.config import resolve_model
from helix_jax.layouts import parse_layout
from helix_jax.model import Sharded, logical_axes

CFG = resolve_model("tiny-dense")
B, S, D, L = CFG.batch, CFG.seq, CFG.d_model, CFG.n_layers
TOL = 1e-5


@pytest.mark.parametrize("spec", ["dp", "dp:fsdp=true", "helix:m=2,n=2,dp=4",
                                  "tp-pp:tp=4,pp=2,dp=2"])
def test_composed_layout_matches_single(spec):
    testing.assert_layout_equivalent(CFG, spec, rtol=TOL)


def programs(spec):
    """Collectives of the forward pass and of the gradient (a training step's backward)."""
    sharded = Sharded.build(CFG, parse_layout(spec))
    forward = sharded.forward_fn()
    args = sharded.abstract_inputs()
    grad = jax.jit(jax.grad(lambda p, x: (forward(p, x)[0] ** 2).sum()),
                   out_shardings=sharded.param_shardings)
    return [collectives(f.lower(*args).compile().as_text()) for f in (forward, grad)]


def test_dp_forward_moves_nothing_and_its_gradients_are_all_reduced():
    fwd, grad = programs("dp")
    assert fwd == []
    assert grad and {c.op for c in grad} == {"all-reduce"}
    assert all(c.group_size == 16 for c in grad)
    # every parameter's gradient is in one of the (possibly combined) all-reduces
    n_params = len(jax.tree.leaves(Sharded.build(CFG, parse_layout("dp")).param_specs))
    assert sum(len(c.operand_shapes) for c in grad) == n_params


def test_fsdp_gathers_parameters_per_layer_and_reduce_scatters_gradients():
    fwd, grad = programs("dp:fsdp=true")
    assert {c.op for c in fwd} == {"all-gather"}
    # every layer parameter with an `embed` dimension is stored split and gathered in the layer scan
    split = [a for a in jax.tree.leaves(logical_axes(CFG)["layers"], is_leaf=lambda t: isinstance(t, tuple))
             if "embed" in a]
    in_loop = [c for c in fwd if c.trip_count == L]
    assert sum(len(c.operand_shapes) for c in in_loop) == len(split) == 11
    assert "reduce-scatter" in {c.op for c in grad}


def test_helix_with_a_data_axis_keeps_collectives_inside_each_replica():
    fwd, _ = programs("helix:m=2,n=2,dp=4")  # mesh (data=4, head=2, dim=2)
    got = Counter((c.op, c.replica_groups, c.trip_count, c.operand_shapes[0]) for c in fwd)
    replicas = [tuple(range(4 * r, 4 * r + 4)) for r in range(4)]
    dims = [(2 * i, 2 * i + 1) for i in range(8)]
    assert got == {
        ("all-reduce", tuple(replicas), L, (B // 4, S, D)): 2,  # attention and FFN outputs
        ("all-reduce", tuple(dims), L, (B // 4, 8, S, S)): 1,  # scores over the dim pair
    }


def test_a_64_device_layout_is_described():
    layout = parse_layout("helix:m=4,n=4,dp=4")
    assert layout.devices == 64 and layout.axis_sizes == {"data": 4, "head": 4, "dim": 4}
    # 16 nodes of 4: score reductions on NVLink
    assert intra_node_axes(layout, HARDWARE["h100-paper"]) == ("dim",)
