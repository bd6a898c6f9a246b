"""helix_jax.analysis.hlo.flops: matmul FLOPs from compiled CPU HLO, with loop trip counts applied."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from helix_jax.analysis.hlo.flops import matmul_flops, program_flops
from helix_jax.config import resolve_model
from helix_jax.layouts import parse_layout
from helix_jax.model import Sharded

F32 = jnp.float32
MATMUL = 2 * 64 * 128 * 256


def _sds(shape, dtype=F32, sharding=None):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def _compile(f, *args):
    return jax.jit(f).lower(*args).compile()


def _mm(x, w):
    return x @ w


def test_plain_matmul_matches_formula_and_cost_analysis():
    c = _compile(_mm, _sds((64, 128)), _sds((128, 256)))
    r = program_flops(c)
    assert r["matmul_flops"] == MATMUL
    assert r["cost_analysis_flops"] == pytest.approx(MATMUL, rel=0.01)
    d = r["detail"]
    assert d["dots"] == 1 and d["uncounted"] == [] and d["loop_trips"] == {}
    assert sum(d["by_computation"].values()) == MATMUL


def test_contracting_dim_read_from_lhs_shape():
    d = matmul_flops(_compile(lambda x, w: x.T @ w, _sds((128, 64)), _sds((128, 256))).as_text())
    assert d["flops"] == MATMUL  # lhs [128, 64] contracts its dim 0 (128), not its last


def test_scan_counts_every_step_where_cost_analysis_counts_one():
    def f(x, ws):  # different weights per step
        return jax.lax.scan(lambda c, w: (c, c @ w), x, ws)[1]

    r = program_flops(_compile(f, _sds((64, 128)), _sds((7, 128, 256))))
    assert r["matmul_flops"] == 7 * MATMUL
    assert r["cost_analysis_flops"] == pytest.approx(MATMUL, rel=0.05)  # the body once
    assert sorted(r["loop_trips"].values()) == [7]
    assert r["trip_counts_known"]


def test_nested_scans_multiply():
    def f(x, ws):  # ws [5, 3, 128, 256]
        def outer(c, w3):
            return c, jax.lax.scan(lambda c2, w: (c2, c2 @ w), c, w3)[1]
        return jax.lax.scan(outer, x, ws)[1]

    d = matmul_flops(_compile(f, _sds((64, 128)), _sds((5, 3, 128, 256))).as_text())
    assert d["flops"] == 15 * MATMUL
    assert sorted(d["loop_trips"].values()) == [3, 5]
    assert [i["runs"] for i in d["items"]] == [15]


def test_fori_loop():
    def f(x, w):
        return jax.lax.fori_loop(0, 6, lambda i, h: jnp.tanh(h @ w), x)

    d = matmul_flops(_compile(f, _sds((64, 128)), _sds((128, 128))).as_text())
    assert d["flops"] == 6 * 2 * 64 * 128 * 128
    assert d["trip_counts_known"]


def test_batched_einsum_counts_batch_dims():
    b, q, k, h, dh = 2, 16, 24, 4, 8

    def f(a, c):
        return jnp.einsum("bqhd,bkhd->bhqk", a, c)

    c = _compile(f, _sds((b, q, h, dh)), _sds((b, k, h, dh)))
    r = program_flops(c)
    assert r["matmul_flops"] == 2 * b * h * q * k * dh
    assert r["cost_analysis_flops"] == pytest.approx(r["matmul_flops"], rel=0.01)


def test_cond_counts_every_branch_as_upper_bound():
    def f(p, x, w1, w2):
        return jax.lax.cond(p, lambda: x @ w1, lambda: (x @ w2) * 2.0)

    d = matmul_flops(_compile(f, _sds((), jnp.bool_), _sds((64, 128)), _sds((128, 256)),
                              _sds((128, 256))).as_text())
    assert d["flops"] == 2 * MATMUL  # both branches, though only one runs
    assert list(d["conditionals"].values()) == [2]


def test_convolution_counts_window_and_features():
    n, ci, co, hw, kh = 2, 6, 8, 16, 3

    def f(a, k):
        return jax.lax.conv_general_dilated(a, k, (1, 1), "VALID", feature_group_count=2)

    c = _compile(f, _sds((n, ci, hw, hw)), _sds((co, ci // 2, kh, kh)))
    r = program_flops(c)
    out = hw - kh + 1
    assert r["matmul_flops"] == 2 * n * co * out * out * (ci // 2) * kh * kh
    assert r["cost_analysis_flops"] == pytest.approx(r["matmul_flops"], rel=0.01)


def test_shard_map_is_per_device():
    mesh = jax.make_mesh((4, 4), ("head", "dim"), axis_types=(AxisType.Explicit,) * 2)

    def local(x, w):  # x [16, 32], w [32, 256] per device
        return jax.lax.psum(x @ w, "dim")

    g = jax.shard_map(local, mesh=mesh, in_specs=(P("head", "dim"), P("dim", None)),
                      out_specs=P("head", None))
    c = _compile(g, _sds((64, 128), sharding=NamedSharding(mesh, P("head", "dim"))),
                 _sds((128, 256), sharding=NamedSharding(mesh, P("dim", None))))
    r = program_flops(c)
    assert r["matmul_flops"] == MATMUL / 16
    assert r["cost_analysis_flops"] == pytest.approx(MATMUL / 16, rel=0.05)


HLO_SNIPPET = """HloModule snippet, num_partitions=1

ENTRY %main (a: f32[32,64], b: f32[64,16], g: s32[4], w: f32[4,64,16]) -> f32[32,16] {
  %a = f32[32,64]{1,0} parameter(0)
  %b = f32[64,16]{1,0} parameter(1)
  %g = s32[4]{0} parameter(2)
  %w = f32[4,64,16]{2,1,0} parameter(3)
  %gemm = (f32[32,16]{1,0}, s8[1024]{0}) custom-call(%a, %b), custom_call_target="__cublas$gemm", backend_config={"gemm_backend_config":{"alpha_real":1,"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]}}}
  %onednn = f32[32,16]{1,0} custom-call(%a, %b), custom_call_target="__onednn$matmul", backend_config={"outer_dimension_partitions":[],"onednn_matmul_config":{"transpose_a":false,"transpose_b":false}}
  %ragged = f32[32,16]{1,0} ragged-dot(%a, %w, %g), lhs_contracting_dims={1}, rhs_contracting_dims={1}, lhs_ragged_dims={0}, rhs_group_dims={0}
  %ragged_k = f32[4,32,16]{2,1,0} ragged-dot(%a, %b, %g), lhs_contracting_dims={1}, rhs_contracting_dims={0}, lhs_ragged_dims={1}
  %mystery = f32[32,16]{1,0} custom-call(%a, %b), custom_call_target="__vendor$fancy_matmul"
  %gemm_out = f32[32,16]{1,0} get-tuple-element(%gemm), index=0
  ROOT %sum = f32[32,16]{1,0} add(%gemm_out, %mystery)
}
"""


def test_custom_calls_counted_or_reported():
    d = matmul_flops(HLO_SNIPPET)
    each = 2 * 32 * 64 * 16
    # cublas gemm, onednn matmul, ragged-dot over rows, ragged-dot over the contracting dim (the 4
    # groups split k between them, so it costs one dense matmul, not four)
    assert d["flops"] == 4 * each
    assert [u["name"] for u in d["uncounted"]] == ["mystery"]
    assert "__vendor$fancy_matmul" in d["uncounted"][0]["reason"]


def _analytic(cfg, attention_fraction=1.0):
    b, s, dm, ff, layers = cfg.batch, cfg.seq, cfg.d_model, cfg.d_ff, cfg.n_layers
    assert cfg.n_heads * cfg.head_dim == dm
    proj = layers * 2 * b * s * (4 * dm * dm + 2 * dm * ff)
    attn = layers * 2 * 2 * b * s * s * dm * attention_fraction
    return proj, attn


# The attention's two matmuls, by their einsum in op_name: the blockwise scan's, or those of
# jax.nn.dot_product_attention (the library call that ordinary attention runs as).
ATTENTION_EINSUMS = ("bqhd,bkhd->bhqk", "bhqk,bkhd->bqhd", "BTNH,BSNH->BNTS", "BNTS,BSNH->BTNH")


def _model_flops(cfg, kernel="auto"):
    s = Sharded.build(cfg, parse_layout("single"), attention_kernel=kernel)
    hlo = s.forward_fn().lower(*s.abstract_inputs()).compile().as_text()
    d = matmul_flops(hlo)
    attn = sum(v for k, v in d["by_op"].items() if any(e in k for e in ATTENTION_EINSUMS))
    return d, attn


@pytest.mark.parametrize("kernel", ("fused", "blockwise"))
def test_tiny_dense_forward_matches_analytic(kernel):
    cfg = resolve_model("tiny-dense").replace(causal=False)
    d, attn = _model_flops(cfg, kernel)
    proj, attn_ref = _analytic(cfg)
    assert d["uncounted"] == [] and d["trip_counts_known"]
    assert cfg.n_layers in d["loop_trips"].values()  # the scan over layers
    assert d["flops"] == pytest.approx(proj + attn_ref, rel=0.02)
    assert attn == pytest.approx(attn_ref, rel=0.02)


def test_tiny_dense_causal_blocks_count_visible_pairs_only():
    cfg = resolve_model("tiny-dense").replace(q_block=8, kv_block=8, causal=True)
    d, attn = _model_flops(cfg, "blockwise")  # the scan skips the blocks in the future
    proj, attn_ref = _analytic(cfg, attention_fraction=10 / 16)
    assert sorted(d["loop_trips"].values()) == sorted([cfg.n_layers, 10])
    assert attn == pytest.approx(attn_ref, rel=0.02)
    assert d["flops"] == pytest.approx(proj + attn_ref, rel=0.02)
