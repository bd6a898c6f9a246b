"""Every helix core against the single-device model: outputs and gradients (float32), through
helix_jax.testing (the helpers users get)."""

import pytest

from helix_jax import testing
from helix_jax.config import resolve_model
from tests.helpers import assert_same_model, rel_err, run

TOL = 1e-5


@pytest.fixture(scope="module")
def reference():
    cache = {}

    def get(cfg):
        if cfg not in cache:
            cache[cfg] = run(cfg, "single")
        return cache[cfg]
    return get


@pytest.mark.parametrize("spec, causal", [
    ("helix", True), ("helix:core=seq_a2a", True), ("helix:core=qk_gather", True),
    ("helix:m=2,n=8,core=seq_a2a", True), ("helix:m=8,n=2", True),
    ("helix", False), ("helix:core=seq_a2a", False), ("helix:core=qk_gather", False),
])
def test_layout_matches_single(spec, causal):
    testing.assert_layout_equivalent("tiny-dense", spec, causal=causal, rtol=TOL)


@pytest.mark.parametrize("core", ["score_psum", "seq_a2a", "qk_gather"])
def test_blockwise_attention_matches_whole_sequence(reference, core):
    cfg = resolve_model("tiny-dense")
    blocked = cfg.replace(q_block=8, kv_block=16)
    ref, got = reference(cfg), run(blocked, f"helix:core={core}")
    assert_same_model(ref, got, TOL)


def test_a_wrong_model_is_caught(reference):
    """The comparison can fail: a different seed gives a different model."""
    cfg = resolve_model("tiny-dense")
    assert rel_err(reference(cfg)["y"], run(cfg, "helix", seed=3, grads=False)["y"]) > 1e-2
