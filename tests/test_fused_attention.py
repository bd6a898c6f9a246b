"""Ordinary attention runs as one library call (`jax.nn.dot_product_attention`) where a device's
work allows it, equal to the blockwise scan; the scan stays where the math needs partial scores or
log-sum-exps; projections compile the scan and say which kernel runs."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helix_jax.analysis.costmodel.hardware import HARDWARE
from helix_jax.analysis.costmodel.project import project
from helix_jax.config import resolve_model
from helix_jax.layouts import parse_layout
from helix_jax.model import Sharded
from helix_jax.nn.attention import attend
from helix_jax.nn.fused_attention import CPU_FUSED_MAX_SCORES, FUSED_SCOPE, fused_attend
from helix_jax.testing import assert_trees_close, run_layout

SCOPE = f"/{FUSED_SCOPE}/"  # inside the scope (not a file name that contains the word)
FUSED = ("single", "tp-pp:tp=2,pp=2", "helix:core=seq_a2a")
BLOCKWISE = ("helix", "helix:core=qk_gather", "kvp:kvp=4", "cp:cp=4")


def lowered_forward(cfg, spec: str, kernel: str = "auto") -> str:
    """The op names of the lowered forward pass (scopes joined by '/')."""
    sharded = Sharded.build(cfg, parse_layout(spec), attention_kernel=kernel)
    text = sharded.forward_fn().lower(*sharded.abstract_inputs()).as_text(debug_info=True)
    return "\n".join(re.findall(r'loc\("([^"]*)"', text))


@pytest.mark.parametrize("spec", FUSED)
def test_ordinary_attention_is_the_library_call_and_equals_the_scan(spec):
    cfg = resolve_model("tiny-llama")  # grouped-query heads, RoPE, causal
    assert SCOPE in lowered_forward(cfg, spec)
    assert SCOPE not in lowered_forward(cfg, spec, "blockwise")
    fused, scan = (run_layout(cfg, spec, attention_kernel=k) for k in ("auto", "blockwise"))
    assert_trees_close({"y": scan["y"]}, {"y": fused["y"]}, 1e-5)
    assert_trees_close(scan["grads"], fused["grads"], 1e-5, "gradient ")


@pytest.mark.parametrize("spec", BLOCKWISE)
def test_partial_scores_and_log_sum_exps_stay_blockwise(spec):
    assert SCOPE not in lowered_forward(resolve_model("tiny-dense"), spec)


def test_a_cpu_takes_the_scan_past_the_measured_crossover():
    side = int(CPU_FUSED_MAX_SCORES ** 0.5)
    cfg = resolve_model("tiny-dense").replace(batch=2, n_layers=1)
    assert SCOPE in lowered_forward(cfg.replace(seq=side), "single")
    assert SCOPE not in lowered_forward(cfg.replace(seq=2 * side), "single")
    assert SCOPE in lowered_forward(cfg.replace(seq=2 * side), "single", "fused")


@pytest.mark.parametrize("offset", (0, 3))
def test_offset_queries_and_unwritten_cache_slots_are_masked(offset):
    """Queries at positions offset.. against 12 keys (seq_a2a's slice, a prefill over a cache
    whose slots past the queries are unwritten): the call equals the scan, GQA included."""
    ks = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(ks[0], (2, 5, 4, 8))
    k, v = (jax.random.normal(s, (2, 12, 2, 8)) for s in ks[1:])
    got = fused_attend(q, k, v, causal=True, q_offset=offset)
    want = attend(q, k, v, causal=True, q_offset=offset)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    traced = jax.jit(lambda o: fused_attend(q, k, v, causal=True, q_offset=o))(jnp.int32(offset))
    np.testing.assert_allclose(np.asarray(traced), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_projections_compile_the_scan_and_say_what_runs():
    cfg = resolve_model("tiny-llama")
    hw = HARDWARE["dgx-h100"]
    single = project(cfg, parse_layout("tp-pp:tp=2"), hw).to_dict()["attention_kernel"]
    assert single["runtime"].startswith("fused: jax.nn.dot_product_attention")
    assert single["compiled"].startswith("blockwise")
    psum = project(cfg, parse_layout("helix:m=2,n=4"), hw).to_dict()["attention_kernel"]
    assert psum["runtime"].startswith("blockwise") and "partial scores" in psum["runtime"]
    decode = project(cfg, parse_layout("single"), hw, mode="decode").to_dict()
    assert "stacked KV cache" in decode["attention_kernel"]["runtime"]
