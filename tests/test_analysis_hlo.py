"""helix_jax.analysis: collectives read from real CPU compiles, iota groups, pricing, hardware."""

import json
import logging
from collections import Counter

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from helix_jax.analysis import (
    HARDWARE,
    Collective,
    collective_seconds,
    collective_time,
    collectives,
    device_groups_cross_nodes,
    load_hardware,
    parse_replica_groups,
    read_cost,
    read_memory,
    scale_for_loops,
    while_trip_counts,
)

DIM_GROUPS = ((0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11), (12, 13, 14, 15))
HEAD_GROUPS = ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15))


@pytest.fixture(scope="module")
def mesh():
    cpus = jax.devices("cpu")
    if len(cpus) < 16:
        pytest.fail("needs 16 CPU devices: helix_jax.devices.ensure_host_devices(16) before jax starts")
    return jax.make_mesh((4, 4), ("head", "dim"), axis_types=(AxisType.Explicit,) * 2,
                         devices=cpus[:16])


def _abstract(mesh, shape, dtype, spec):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))


@pytest.fixture(scope="module")
def program(mesh):
    """One shard_map program with every collective kind, a loop, and a nested loop."""
    shift = [(i, (i + 1) % 4) for i in range(4)]

    def body(x, h, y):                    # local blocks: x f32[16,8], h f16[16,8], y f32[16,4]
        ar = jax.lax.psum(x, "dim")
        rs = jax.lax.psum_scatter(h, "head", scatter_dimension=0, tiled=True)
        ag = jax.lax.all_gather(h, "dim", axis=1, tiled=True)
        a2a = jax.lax.all_to_all(x * 2, "dim", 0, 0, tiled=True)
        a2a16 = jax.lax.all_to_all(y, ("head", "dim"), 0, 0, tiled=True)
        pp = jax.lax.ppermute(h, "head", shift)
        loop = jax.lax.fori_loop(0, 7, lambda i, c: jax.lax.psum(c, "head") * 0.5, x)

        def outer(c, _):
            inner = jax.lax.fori_loop(0, 3, lambda j, d: jax.lax.ppermute(d, "dim", shift), c)
            return inner, None

        nested, _ = jax.lax.scan(outer, h + 1, None, length=5)
        return ar, rs, ag, a2a, a2a16, pp, loop, nested

    hd = P("head", "dim")
    outs = (hd, hd, P("head", None), hd, P(("head", "dim")), hd, hd, hd)
    f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(hd, hd, P(("head", "dim"))),
                              out_specs=outs, check_vma=False))
    compiled = f.lower(_abstract(mesh, (64, 32), jnp.float32, hd),
                       _abstract(mesh, (64, 32), jnp.float16, hd),
                       _abstract(mesh, (256, 4), jnp.float32, P(("head", "dim")))).compile()
    return compiled.as_text()


def test_finds_exactly_the_expected_collectives(program):
    got = Counter((c.op, c.dtype, c.group_size, c.payload_bytes, c.trip_count)
                  for c in collectives(program))
    expected = Counter([
        ("all-reduce", "f32", 4, 16 * 8 * 4, 1),            # psum over dim
        ("reduce-scatter", "f16", 4, 16 * 8 * 2, 1),        # operand = the full local block
        ("all-gather", "f16", 4, 16 * 32 * 2, 1),           # result = the gathered block
        ("all-to-all", "f32", 4, 16 * 8 * 4, 1),            # 4 operands of [4,8], summed
        ("all-to-all", "f32", 16, 16 * 4 * 4, 1),           # 16 operands, /*index=5*/ comments
        ("collective-permute", "f16", 2, 16 * 8 * 2, 1),
        ("all-reduce", "f32", 4, 16 * 8 * 4, 7),            # inside fori_loop(0, 7)
        ("collective-permute", "f16", 2, 16 * 8 * 2, 15),   # fori_loop(0, 3) inside scan(5)
    ])
    assert got == expected


def test_groups_and_pairs_follow_mesh_axes(program):
    cs = collectives(program)
    by = {(c.op, c.trip_count, c.group_size): c for c in cs}
    assert by[("all-reduce", 1, 4)].replica_groups == DIM_GROUPS
    assert by[("all-reduce", 7, 4)].replica_groups == HEAD_GROUPS
    assert by[("reduce-scatter", 1, 4)].replica_groups == HEAD_GROUPS
    assert by[("reduce-scatter", 1, 4)].result_shapes == ((4, 8),)
    assert by[("all-gather", 1, 4)].replica_groups == DIM_GROUPS
    assert by[("all-to-all", 1, 16)].replica_groups == (tuple(range(16)),)
    a2a = by[("all-to-all", 1, 4)]
    assert a2a.operand_shapes == ((4, 8),) * 4 and a2a.replica_groups == DIM_GROUPS
    assert by[("all-to-all", 1, 16)].operand_shapes == ((1, 4),) * 16
    head_pairs = {(s, t) for s, t in by[("collective-permute", 1, 2)].source_target_pairs}
    assert head_pairs == {(h * 4 + d, ((h + 1) % 4) * 4 + d) for h in range(4) for d in range(4)}
    dim_pairs = {(s, t) for s, t in by[("collective-permute", 15, 2)].source_target_pairs}
    assert dim_pairs == {(h * 4 + d, h * 4 + (d + 1) % 4) for h in range(4) for d in range(4)}


def test_while_trip_counts_and_loop_scale(program):
    cs = collectives(program)
    counts = while_trip_counts(program)
    assert sorted(counts.values()) == [3, 5, 7]
    inner = next(c for c in cs if c.trip_count == 15)
    assert counts[inner.computation] == 3 and inner.trip_count_known
    assert scale_for_loops(program) == 15


GPU_LIKE = """HloModule gpu_like, is_scheduled=true, num_partitions=8

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %s = f32[] add(%x, %y)
}

%inner (p: bf16[4,8]) -> bf16[4,8] {
  %p = bf16[4,8]{1,0} parameter(0)
  %ar-start = bf16[4,8]{1,0} all-reduce-start(%p), channel_id=3, replica_groups=[2,4]<=[8], use_global_device_ids=true, to_apply=%add
  ROOT %ar-done = bf16[4,8]{1,0} all-reduce-done(%ar-start)
}

%a2a_comp (q: f32[8,16]) -> f32[8,16] {
  %q = f32[8,16]{1,0} parameter(0)
  ROOT %a2a = f32[8,16]{1,0} all-to-all(%q), channel_id=4, replica_groups=[4,2]<=[2,4]T(1,0), dimensions={0}
}

%body (t: (s32[], bf16[4,8])) -> (s32[], bf16[4,8]) {
  %t = (s32[], bf16[4,8]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %v = bf16[4,8]{1,0} get-tuple-element(%t), index=1
  %r = bf16[4,8]{1,0} call(%v), to_apply=%inner
  %cp-start = (bf16[4,8]{1,0}, bf16[4,8]{1,0}, u32[], u32[]) collective-permute-start(%r), channel_id=5, source_target_pairs={{0,4},{4,0}}
  %cp-done = bf16[4,8]{1,0} collective-permute-done(%cp-start)
  ROOT %out = (s32[], bf16[4,8]{1,0}) tuple(%i, %cp-done)
}

%cond (c: (s32[], bf16[4,8])) -> pred[] {
  %c = (s32[], bf16[4,8]{1,0}) parameter(0)
  ROOT %k = pred[] constant(true)
}

%body2 (u: f32[8,16]) -> f32[8,16] {
  %u = f32[8,16]{1,0} parameter(0)
  %rs = f32[2,16]{1,0} reduce-scatter(%u), channel_id=7, replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={0}, to_apply=%add
  ROOT %back = f32[8,16]{1,0} all-gather(%rs), channel_id=8, replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={0}
}

%cond2 (w: f32[8,16]) -> pred[] {
  %w = f32[8,16]{1,0} parameter(0)
  ROOT %k2 = pred[] constant(true)
}

ENTRY %main (a: bf16[4,8], b: f32[8,16], g: f32[2,16]) -> (bf16[4,8], f32[8,16], f32[8,16], f32[8,16]) {
  %a = bf16[4,8]{1,0} parameter(0)
  %b = f32[8,16]{1,0} parameter(1)
  %g = f32[2,16]{1,0} parameter(2)
  %zero = s32[] constant(0)
  %init = (s32[], bf16[4,8]{1,0}) tuple(%zero, %a)
  %w = (s32[], bf16[4,8]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"6"}}
  %res = bf16[4,8]{1,0} get-tuple-element(%w), index=1
  %ag-start = (f32[2,16]{1,0}, f32[8,16]{1,0}) all-gather-start(%g), channel_id=6, replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={0}, use_global_device_ids=true
  %ag-done = f32[8,16]{1,0} all-gather-done(%ag-start)
  %a2a-start = ((f32[8,16]{1,0}), f32[8,16]{1,0}) async-start(%b), calls=%a2a_comp
  %a2a-done = f32[8,16]{1,0} async-done(%a2a-start), calls=%a2a_comp
  %w2 = f32[8,16]{1,0} while(%b), condition=%cond2, body=%body2
  ROOT %o = (bf16[4,8]{1,0}, f32[8,16]{1,0}, f32[8,16]{1,0}, f32[8,16]{1,0}) tuple(%res, %ag-done, %a2a-done, %w2)
}
"""


def test_gpu_style_async_nested_and_unknown_loops(caplog):
    cs = {c.name: c for c in collectives(GPU_LIKE)}
    assert set(cs) == {"ar-start", "a2a", "cp-start", "ag-start", "rs", "back"}
    ar = cs["ar-start"]                                   # in a `call` inside a 6-trip while body
    assert (ar.op, ar.dtype, ar.is_async, ar.trip_count) == ("all-reduce", "bf16", True, 6)
    assert ar.replica_groups == ((0, 1, 2, 3), (4, 5, 6, 7)) and ar.payload_bytes == 64
    cp = cs["cp-start"]                                   # echo and u32 context dropped
    assert (cp.op, cp.result_shapes, cp.payload_bytes, cp.trip_count) == (
        "collective-permute", ((4, 8),), 64, 6)
    assert cp.source_target_pairs == ((0, 4), (4, 0))
    ag = cs["ag-start"]
    assert (ag.op, ag.result_shapes, ag.operand_shapes) == ("all-gather", ((8, 16),), ((2, 16),))
    assert ag.payload_bytes == 8 * 16 * 4 and ag.trip_count == 1
    a2a = cs["a2a"]                                       # async-start counted, async-done not
    assert a2a.trip_count == 1 and a2a.replica_groups == ((0, 4), (1, 5), (2, 6), (3, 7))
    assert cs["rs"].trip_count == 1 and not cs["rs"].trip_count_known
    assert cs["rs"].payload_bytes == 8 * 16 * 4
    with caplog.at_level(logging.WARNING):
        counts = while_trip_counts(GPU_LIKE)
    assert counts == {"body": 6, "body2": 1}
    assert "known_trip_count" in caplog.text


def test_hand_written_dialect_inline_operand_shapes():
    text = """HloModule m
ENTRY e {
  input = f32[8,256,256] parameter(0)
  ag-start = (f32[8,256,256], f32[16,256,256]) all-gather-start(
    f32[8,256,256] input), replica_groups={{0,1}}, dimensions={0},
    metadata={op_type="AllGather" op_name="ag0"}
  ROOT ag-done = f32[16,256,256] all-gather-done(
    (f32[8,256,256], f32[16,256,256]) ag-start)
}
"""
    (c,) = collectives(text)
    assert (c.op, c.result_shapes, c.group_size) == ("all-gather", ((16, 256, 256),), 2)
    assert c.payload_bytes == 16 * 256 * 256 * 4


def test_iota_and_literal_replica_groups():
    assert parse_replica_groups("[4,4]<=[16]") == DIM_GROUPS
    assert parse_replica_groups("[4,4]<=[4,4]T(1,0)") == HEAD_GROUPS
    assert parse_replica_groups("[2,8]<=[2,4,2]T(0,2,1)") == (
        (0, 2, 4, 6, 1, 3, 5, 7), (8, 10, 12, 14, 9, 11, 13, 15))
    assert parse_replica_groups("[1,16]<=[16]") == (tuple(range(16)),)
    assert parse_replica_groups("{{0,1},{2,3}}") == ((0, 1), (2, 3))
    assert parse_replica_groups("{}", num_devices=4) == ((0, 1, 2, 3),)
    assert parse_replica_groups("{}") == ()


def test_groups_cross_nodes():
    def node(d):  # four devices per node
        return d // 4

    assert not device_groups_cross_nodes(DIM_GROUPS, node)
    assert device_groups_cross_nodes(HEAD_GROUPS, node)
    assert not device_groups_cross_nodes(((0, 1), (2, 3)), node)
    assert device_groups_cross_nodes(((0, 1), (3, 4)), node)


def test_payload_and_bytes_by_op():
    def mk(op, res, opnd):
        return Collective(op, "f16", res, opnd, (tuple(range(4)),))

    assert mk("all-gather", ((16, 8),), ((4, 8),)).payload_bytes == 16 * 8 * 2
    assert mk("reduce-scatter", ((4, 8),), ((16, 8),)).payload_bytes == 16 * 8 * 2
    assert mk("all-reduce", ((16, 8),), ((16, 8),)).payload_bytes == 16 * 8 * 2
    mixed = Collective("all-reduce", "f32", ((2,), (2,)), ((2,), (2,)), ((0, 1),),
                       operand_dtypes=("f32", "bf16"), result_dtypes=("f32", "bf16"))
    assert mixed.operand_bytes == 8 + 4 and mixed.result_bytes == 12
    assert Collective("collective-permute", "f32", ((1,),), ((1,),),
                      source_target_pairs=((0, 0),)).group_size == 1


def test_pricing_formulas_on_hand_numbers():
    v, w, lat = 1e9, 1e11, 1e-6
    assert collective_seconds("all-gather", v, 4, w, lat) == pytest.approx(0.75e-2 + 3e-6)
    assert collective_seconds("reduce-scatter", v, 4, w, lat) == pytest.approx(0.75e-2 + 3e-6)
    assert collective_seconds("all-reduce", v, 4, w, lat) == pytest.approx(1.5e-2 + 6e-6)
    assert collective_seconds("all-to-all", v, 16, w, 0.0) == pytest.approx(15 / 16 * 1e-2)
    assert collective_seconds("collective-permute", v, 2, w, lat) == pytest.approx(1e-2 + 1e-6)
    assert collective_seconds("all-reduce-start", v, 4, w, 0.0) == pytest.approx(1.5e-2)
    assert collective_seconds("all-reduce", v, 1, w, lat) == 0.0
    with pytest.raises(ValueError, match="unknown collective"):
        collective_seconds("broadcast", v, 4, w, lat)


def test_collective_time_picks_link_and_scales_by_trips():
    hw = HARDWARE["h100-paper"]
    v = 4 * 2**20
    intra = Collective("all-reduce", "f32", ((v // 4,),), ((v // 4,),), DIM_GROUPS, trip_count=3)
    inter = Collective("all-reduce", "f32", ((v // 4,),), ((v // 4,),), HEAD_GROUPS)
    by_four = lambda d: d // 4  # noqa: E731 - the paper's 4 GPUs per node, positions in order
    assert collective_time(intra, hw, by_four) == pytest.approx(
        3 * collective_seconds("all-reduce", v, 4, hw.nvlink_bytes_per_s, hw.latency_nvlink_s))
    assert collective_time(inter, hw, by_four) == pytest.approx(
        collective_seconds("all-reduce", v, 4, hw.ib_bytes_per_s, hw.latency_ib_s))
    assert collective_time(inter, hw, node_of=lambda d: 0) == pytest.approx(
        collective_seconds("all-reduce", v, 4, hw.nvlink_bytes_per_s, hw.latency_nvlink_s))


def test_hardware_profiles_and_loading(tmp_path):
    paper = load_hardware("h100-paper")
    assert (paper.gpus_per_node, paper.nvlink_bytes_per_s, paper.flops_per_s) == (4, 200e9, 800e12)
    assert "bidirectional" in paper.notes and load_hardware("h100-sxm").gpus_per_node == 4
    with pytest.raises(ValueError, match="h100-paper"):
        load_hardware("a100-nonexistent")
    optional = ("name", "notes", "sm_count", "mm_tile_m", "mm_tile_n", "attention_flops_per_s",
                "allreduce_busbw", "busbw_max_other", "latency_small_s", "nic_bytes_per_s",
                "sources")
    fields = {k: v for k, v in vars(paper).items() if k not in optional}
    good = tmp_path / "mine.json"
    good.write_text(json.dumps({**fields, "gpus_per_node": 8}))
    mine = load_hardware(good)
    assert (mine.name, mine.gpus_per_node, mine.ib_bytes_per_s) == ("mine", 8, 200e9)
    toml = tmp_path / "t.toml"
    toml.write_text("\n".join(f"{k} = {v!r}" for k, v in fields.items()) + '\nname = "tt"\n')
    assert load_hardware(toml) == paper.__class__(**{**fields, "name": "tt", "notes": ""})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({k: v for k, v in fields.items()
                               if k not in ("ib_bytes_per_s", "latency_ib_s")}))
    missing = r"missing hardware fields \['ib_bytes_per_s', 'latency_ib_s'\]"
    with pytest.raises(ValueError, match=missing):
        load_hardware(bad)
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({**fields, "nvlink_gbps": 1}))
    with pytest.raises(ValueError, match="nvlink_gbps"):
        load_hardware(extra)


def test_read_cost_and_memory(mesh):
    def mm(x, w):                         # local x [16,32] @ w [32,64], then psum over dim
        return jax.lax.psum(x @ w, "dim")

    f = jax.jit(jax.shard_map(mm, mesh=mesh, in_specs=(P("head", "dim"), P("dim", None)),
                              out_specs=P("head", None), check_vma=False))
    compiled = f.lower(_abstract(mesh, (64, 128), jnp.float32, P("head", "dim")),
                       _abstract(mesh, (128, 64), jnp.float32, P("dim", None))).compile()
    cost = read_cost(compiled)
    local_matmul = 2 * 16 * 32 * 64
    assert local_matmul <= cost["flops"] <= 1.1 * local_matmul   # per device, not global
    assert cost["bytes_accessed"] > 0
    raw = compiled.cost_analysis()
    raw = raw[0] if isinstance(raw, list) else raw
    assert read_cost([raw]) == read_cost(raw) == cost
    mem = read_memory(compiled)
    assert mem["argument_bytes"] == (16 * 32 + 32 * 64) * 4
    assert mem["output_bytes"] == 16 * 64 * 4
    assert mem["total_bytes"] == (mem["argument_bytes"] + mem["output_bytes"] + mem["temp_bytes"]
                                  - mem["alias_bytes"])
    assert scale_for_loops(compiled.as_text()) == 1
    (ar,) = collectives(compiled.as_text())
    assert (ar.op, ar.payload_bytes, ar.replica_groups) == ("all-reduce", 16 * 64 * 4, DIM_GROUPS)


def test_the_h200_profile_is_the_h100_one_with_its_memory():
    h100, h200 = load_hardware("dgx-h100"), load_hardware("dgx-h200")
    differ = {f for f in vars(h100) if getattr(h100, f) != getattr(h200, f)}
    assert differ == {"name", "notes", "sources", "hbm_bytes_per_s", "hbm_capacity_bytes"}
    assert (h200.hbm_bytes_per_s, h200.hbm_capacity_bytes) == (4.3e12, 141e9)
    assert {"hbm_bytes_per_s", "hbm_capacity_bytes"} <= set(h200.sources)
