"""Parameter shardings and the collectives each helix core compiles to (read from the HLO)."""

import chex
import pytest
from jax.sharding import PartitionSpec as P

from helix_jax.config import resolve_model
from helix_jax.layouts import parse_layout
from helix_jax.model import Sharded
from tests.helpers import compiled_collectives

CFG = resolve_model("tiny-dense")  # B=16, S=32, D=128, H=16, d=8, 2 layers
L, B, S, D = CFG.n_layers, CFG.batch, CFG.seq, CFG.d_model


def test_helix_parameter_shardings():
    specs = Sharded.build(CFG, parse_layout("helix")).param_specs["layers"]
    assert specs["attn"]["wq"] == P(None, None, "head", "dim")  # [L, D, H/n, d/m]
    assert specs["attn"]["wo"] == P(None, "head", "dim", None)  # [L, H/n, d/m, D]
    assert specs["mlp"]["w1"] == P(None, None, ("head", "dim"))  # F split 16 ways
    assert specs["mlp"]["w2"] == P(None, ("head", "dim"), None)
    assert specs["ln1"]["scale"] == P(None, None)


def test_params_live_in_their_shards():
    sharded = Sharded.build(CFG, parse_layout("helix"))
    wq = sharded.init(0)["layers"]["attn"]["wq"]
    assert wq.sharding.spec == P(None, None, "head", "dim")
    chex.assert_shape([s.data for s in wq.addressable_shards], (L, D, 16 // 4, 8 // 4))
    chex.assert_type(wq, float)


# Per layer (the layer scan runs L times): the attention output and the FFN output are each
# summed over all 16 devices: an all-reduce of the local [B, S, D] partials.
OUT_REDUCES = {("all-reduce", 16, L, (B, S, D)): 2}


def test_score_psum_sums_partial_scores_over_dim_groups():
    # One all-reduce over the 4 devices of a head group, of the [B, H/n, S, S] partial scores.
    expected = OUT_REDUCES | {("all-reduce", 4, L, (B, 4, S, S)): 1}
    assert compiled_collectives(CFG, "helix") == expected


def test_score_psum_blocks_skip_masked_blocks():
    # 8x8 blocks: 4 query blocks see 1+2+3+4 = 10 key blocks, so 10 block reductions per layer.
    cfg = CFG.replace(q_block=8, kv_block=8)
    expected = OUT_REDUCES | {("all-reduce", 4, L * 10, (B, 4, 8, 8)): 1}
    assert compiled_collectives(cfg, "helix") == expected


def test_seq_a2a_moves_q_and_o_and_gathers_kv():
    m = 4
    expected = OUT_REDUCES | {
        ("all-to-all", m, L, (B, S // m, 4, 8 // m)): 2,  # q to a sequence split, o back
        ("all-gather", m, L, (B, S, 4, 8 // m)): 2,  # k and v to the full head dim
    }
    got = compiled_collectives(CFG, "helix:core=seq_a2a")
    assert got == expected
    assert not any(op == "all-reduce" and g == m for op, g, _, _ in got)  # no score reduction


def test_qk_gather_gathers_q_and_k():
    expected = OUT_REDUCES | {("all-gather", 4, L, (B, S, 4, 2)): 2}
    assert compiled_collectives(CFG, "helix:core=qk_gather") == expected


def test_single_has_no_collectives():
    assert not compiled_collectives(CFG, "single")


@pytest.mark.parametrize("spec", ["helix:m=2,n=8"])
def test_dim_groups_follow_m(spec):
    got = compiled_collectives(CFG, spec)
    assert got[("all-reduce", 2, L, (B, 2, S, S))] == 1
