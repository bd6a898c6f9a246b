"""Presets, layout parsing, validation errors and node placement."""

import pytest

from helix_jax.analysis.costmodel.hardware import HARDWARE
from helix_jax.analysis.costmodel.topology import intra_node_axes, node_of
from helix_jax.config import PRESETS, resolve_model
from helix_jax.layouts import LAYOUTS, parse_layout


def test_presets_have_the_paper_shapes():
    p = PRESETS["paper-dense"]
    assert (p.n_layers, p.n_heads, p.head_dim, p.d_model, p.d_ff) == (2, 16, 512, 8192, 32768)
    assert (p.batch, p.seq, p.dtype) == (1024, 10000, "float16")
    m = PRESETS["paper-moe"]
    assert (m.n_layers, m.n_experts) == (4, 16)
    t = PRESETS["tiny-moe"]
    assert (t.n_heads, t.head_dim, t.d_model, t.d_ff, t.n_layers, t.n_experts) == (16, 8, 128, 256, 4, 16)


@pytest.mark.parametrize("kwargs, words", [
    (dict(batch=0), "batch must be a whole number from 1 to 1,048,576"),
    (dict(dtype="float8"), "dtype"),
    (dict(q_block=-1), "q_block must be a whole number from 0 to"),
])
def test_bad_configs_say_what_is_wrong(kwargs, words):
    with pytest.raises(ValueError, match=words):
        resolve_model("tiny-dense", **kwargs)


def test_unknown_model_and_top_k():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        resolve_model("nope")
    with pytest.raises(ValueError, match="top_k=17 is more than n_experts=16"):
        resolve_model("tiny-moe", top_k=17)


def test_parse_round_trip_and_defaults():
    layout = parse_layout("helix:m=2,n=8,core=seq_a2a")
    assert layout.axis_sizes == {"head": 8, "dim": 2}
    assert layout.options["core"] == "seq_a2a"
    assert parse_layout(layout.spec) == layout
    assert parse_layout("helix").axis_sizes == {"head": 4, "dim": 4}
    assert parse_layout("single").devices == 1
    for name in LAYOUTS:
        assert parse_layout(name).spec.startswith(name)


@pytest.mark.parametrize("spec, words", [
    ("helx", "unknown layout 'helx'"),
    ("helix:k=3", "unknown option 'k'"),
    ("helix:m=four", "option m='four' must be int"),
    ("helix:core=fast", "core='fast' is not one of score_psum, seq_a2a, qk_gather"),
    ("helix:m=0", "m=0 must be between 1 and 65,536"),
])
def test_bad_layout_strings(spec, words):
    with pytest.raises(ValueError, match=words):
        parse_layout(spec)


@pytest.mark.parametrize("spec, overrides, words", [
    ("helix:m=4,n=32", {}, r"n_heads=16 is not divisible by the 32 shards of 'heads'"),
    ("helix:m=16,n=1", {}, r"head_dim=8 is not divisible by the 16 shards of 'head_dim'"),
    ("helix:core=seq_a2a", dict(seq=30), "seq=30 is not divisible by 4"),
    ("ep", {}, "dense model"),
])
def test_configs_that_do_not_fit_a_layout(spec, overrides, words):
    with pytest.raises(ValueError, match=words):
        parse_layout(spec).validate(resolve_model("tiny-dense", **overrides))


def test_device_count_must_match_the_mesh():
    with pytest.raises(ValueError, match="16-device mesh .* but 8 devices"):
        parse_layout("helix").validate(resolve_model("tiny-dense"), devices=8)


def test_helix_dim_groups_stay_inside_a_node():
    layout = parse_layout("helix")  # (head=4, dim=4) on 4 nodes x 4 GPUs
    paper, dgx = HARDWARE["h100-paper"], HARDWARE["dgx-h100"]
    assert [node_of(layout, paper)(i) for i in range(16)] == [i // 4 for i in range(16)]
    assert intra_node_axes(layout, paper) == ("dim",)
    # the hardware decides too: on 8-GPU nodes a head pair shares a node, but no head group does
    assert [node_of(layout, dgx)(i) for i in range(16)] == [i // 8 for i in range(16)]
    assert intra_node_axes(layout, dgx) == ("dim",)
    assert intra_node_axes(parse_layout("helix:m=4,n=2"), dgx) == ("head", "dim")


def test_layouts_are_hashable_by_what_they_describe():
    same = {parse_layout("helix"), parse_layout("helix:m=4,n=4,core=score_psum")}
    assert len(same) == 1
    assert parse_layout("tp-pp") != parse_layout("tp-pp:place=stage-inner")
    assert len({parse_layout("tp-pp"), parse_layout("tp-pp:place=stage-inner")}) == 2
