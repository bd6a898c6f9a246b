"""Mixture of experts: routing, capacity, dispatch on every layout, stats and collectives.

References: a Python loop over the experts (each applied to the tokens it took, with the capacity
rule written out per token shard) for the layer alone on every layout, and the single-device
model for the whole model. Float32 tolerance 1e-5.
"""

from __future__ import annotations

import functools
import math
from collections import Counter

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from helix_jax.analysis import collectives
from helix_jax.comm import Comm
from helix_jax.config import resolve_model
from helix_jax.layouts import Layout, parse_layout
from helix_jax.model import STAT_KEYS_MOE, Sharded
from helix_jax.nn.moe import MoE, aux_loss, route
from helix_jax.parallel.experts import buffer_positions
from helix_jax.routing import capacity, check_moe
from helix_jax.testing import assert_trees_close
from tests.helpers import rel_err, run

TOL = 1e-5
# B=16, S=16: 16 tokens per shard under ep=16, so C = ceil(1.25 · 16 / 16) = 2 by default.
CFG = resolve_model("tiny-moe", n_layers=2, batch=16, seq=16)
ROOMY = 16.0  # capacity factor at which no token is ever dropped: C >= T·k


def tensor_layout(sp: bool = False) -> Layout:
    """Megatron TP=16 without the pipeline axis (the `tp-pp` rules, one stage, no `layers`)."""
    rules = {"heads": ("tensor",), "mlp": ("tensor",), "expert_mlp": ("tensor",)}
    if sp:
        rules["act_seq"] = ("tensor",)
    return Layout("tp", ("tensor",), (16,), rules, {"sp": sp})


def layout_of(spec) -> Layout:
    return spec if isinstance(spec, Layout) else parse_layout(spec)


# ----------------------------------------------------------------------------- reference

def gelu(x):
    return jax.nn.gelu(x, approximate=True)


def keep_mask(chosen: np.ndarray, n_experts: int, cap: int) -> np.ndarray:
    """[T, k] chosen experts of one token shard -> kept under capacity: first choices of all
    tokens in order, then second choices, each expert taking at most `cap`."""
    taken = np.zeros(n_experts, int)
    keep = np.zeros(chosen.shape, bool)
    for r in range(chosen.shape[1]):
        for t in range(chosen.shape[0]):
            e = chosen[t, r]
            keep[t, r] = taken[e] < cap
            taken[e] += 1
    return keep


def reference_routing(cfg, p, h, shards: int):
    """Chosen experts [T, k] (stable sort: ties to the lower index) and kept mask [T, k], with
    the capacity rule applied per token shard (contiguous batch blocks)."""
    B, S, D = h.shape
    probs = np.asarray(jax.nn.softmax(jnp.asarray(h.reshape(-1, D)) @ p["router"], axis=-1))
    chosen = np.argsort(-probs, axis=-1, kind="stable")[:, :cfg.top_k]
    per_shard = B * S // shards
    cap = capacity(per_shard, cfg.top_k, cfg.n_experts, cfg.capacity_factor)
    keep = np.concatenate([keep_mask(c, cfg.n_experts, cap)
                           for c in np.split(chosen, shards)])
    return chosen, keep


def reference_moe(p, h, chosen, keep, normalize):
    """The MoE as a loop over experts, each masked to the tokens that chose it and were kept
    (differentiable in p and h; routing given)."""
    B, S, D = h.shape
    t = h.reshape(-1, D)
    probs = jax.nn.softmax(t @ p["router"], axis=-1)
    w = jnp.take_along_axis(probs, chosen, axis=-1)
    if chosen.shape[1] > 1 or normalize:
        w = w / w.sum(-1, keepdims=True)
    out = jnp.zeros_like(t)
    for e in range(p["router"].shape[1]):
        w_e = jnp.sum(w * ((chosen == e) & keep), axis=-1)  # [T]: 0 unless e took the token
        y = gelu(t @ p["w1"][e] + p["b1"][e]) @ p["w2"][e] + p["b2"][e]
        out = out + w_e[:, None] * y
    return out.reshape(B, S, D)


@functools.partial(jax.jit, static_argnames="normalize")
def reference_with_grads(p, h, ct, chosen, keep, normalize=False):
    """(y, grads of sum(y·ct) wrt (p, h)) of reference_moe."""
    def loss(p, h):
        y = reference_moe(p, h, chosen, keep, normalize)
        return jnp.sum(y * ct), y
    (_, y), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(p, h)
    return y, grads


# ----------------------------------------------------------------------------- the layer alone

def layer_params(cfg, seed=0):
    """The MoE's graphdef, float32 parameters (biases moved off 0) and their logical axes."""
    with nnx.use_eager_sharding(False):
        module = nnx.eval_shape(lambda: MoE(cfg, rngs=nnx.Rngs(seed)))
    logical = {k[0]: tuple(v.get_metadata()["out_sharding"])
               for k, v in nnx.to_flat_state(nnx.state(module))}
    keys = jax.random.split(jax.random.key(seed), 5)
    D, F, E = cfg.d_model, cfg.d_ff, cfg.n_experts
    params = {
        "router": jax.random.normal(keys[0], (D, E)) * D**-0.5,
        "w1": jax.random.normal(keys[1], (E, D, F)) * D**-0.5,
        "b1": 0.1 * jax.random.normal(keys[2], (E, F)),
        "w2": jax.random.normal(keys[3], (E, F, D)) * F**-0.5,
        "b2": 0.1 * jax.random.normal(keys[4], (E, D)),
    }
    return nnx.graphdef(module), jax.device_get(params), logical


def layer_inputs(cfg, seed=0):
    keys = jax.random.split(jax.random.key(seed + 100))
    shape = (cfg.batch, cfg.seq, cfg.d_model)
    return (np.asarray(jax.random.normal(keys[0], shape)),
            np.asarray(jax.random.normal(keys[1], shape)))


_LAYER_RUNS: dict = {}


def run_layer(cfg, spec, seed=0):
    """(y, stats, grads wrt (params, h)) of the MoE layer on a layout, inside one shard_map;
    remembered, so that tests comparing layouts share runs."""
    key = (cfg, repr(spec), seed)
    if key in _LAYER_RUNS:
        return _LAYER_RUNS[key]
    layout = layout_of(spec)
    comm = Comm(layout)
    gdef, params, logical = layer_params(cfg, seed)
    h, ct = layer_inputs(cfg, seed)
    h_spec = layout.pspec(("batch", "act_seq", None))

    def body(p, h):  # as in Block: the MoE sees whole sequences
        return nnx.merge(gdef, p)(comm.gather_seq(h), comm)

    f = jax.shard_map(body, mesh=layout.make_mesh(),
                      in_specs=({k: layout.pspec(v) for k, v in logical.items()}, h_spec),
                      out_specs=(h_spec, {k: P() for k in STAT_KEYS_MOE}))

    def loss(p, h):
        y, stats = f(p, h)
        return jnp.sum(y * ct), (y, stats)

    (_, (y, stats)), grads = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(params, h)
    _LAYER_RUNS[key] = jax.device_get((y, stats, grads)), params, h, ct
    return _LAYER_RUNS[key]


def check_layer(cfg, spec, shards):
    """The layer on `spec` against the expert loop with capacity per token shard (`shards`
    contiguous batch blocks): output, gradients, dropped and routed counts."""
    (y, stats, grads), p, h, ct = run_layer(cfg, spec)
    chosen, keep = reference_routing(cfg, p, h, shards)
    ref_y, ref_grads = reference_with_grads(p, h, ct, chosen, keep,
                                            normalize=cfg.normalize_top_k)
    assert rel_err(ref_y, y) < TOL
    assert rel_err(ref_grads, grads) < TOL
    assert stats["dropped"] == (~keep).sum()
    assert stats["routed"] == keep.size
    return stats, keep


@pytest.mark.parametrize("top_k", [1, 2])
def test_layer_matches_expert_loop(top_k):
    cfg = CFG.replace(top_k=top_k, capacity_factor=ROOMY)
    stats, keep = check_layer(cfg, "single", shards=1)
    assert keep.all() and stats["dropped"] == 0


def test_normalize_top_k_with_one_expert():
    """One weight renormalised is 1: the output is the expert's own and the router gets no
    gradient (only rounding noise, so it is checked absolutely)."""
    cfg = CFG.replace(normalize_top_k=True, capacity_factor=ROOMY)
    (y, _, (gp, gh)), p, h, ct = run_layer(cfg, "single")
    chosen, keep = reference_routing(cfg, p, h, 1)
    ref_y, (ref_gp, ref_gh) = reference_with_grads(p, h, ct, chosen, keep,
                                            normalize=cfg.normalize_top_k)
    assert rel_err(ref_y, y) < TOL
    assert rel_err(ref_gh, gh) < TOL
    assert rel_err({k: v for k, v in ref_gp.items() if k != "router"},
                   {k: v for k, v in gp.items() if k != "router"}) < TOL
    assert np.abs(gp["router"]).max() < 1e-4 * np.abs(gp["w1"]).max()


# Under capacity pressure every layout keeps exactly what its own token shards allow: ep (any dp)
# routes 16 shards of 16 tokens (C per source shard); helix-ep and tp see all the tokens of their
# data replica, replicated. Each case: (layout, token shards, top_k, capacity factor). The ep
# chunk cases share k = 1, factor 2.5 (C = 3: 2 chunks pad it to 4 slots, 3 chunks need none).
LAYER_CASES = [
    ("single", 1, 2, 0.5), ("ep", 16, 1, 2.5), ("ep:chunks=2", 16, 1, 2.5),
    ("ep:chunks=3", 16, 1, 2.5), ("ep:ep=8,dp=2", 16, 2, 0.5), ("helix-ep", 1, 1, 1.0),
    ("helix-ep:m=2,n=2,dp=4", 4, 2, 0.5), ("dp", 16, 2, 1.0), (tensor_layout(), 1, 2, 0.5),
    (tensor_layout(sp=True), 1, 1, 1.0),
]


@pytest.mark.parametrize("spec,shards,top_k,factor", LAYER_CASES,
                         ids=[c[0] if isinstance(c[0], str) else f"tp,sp={c[0].options['sp']}"
                              for c in LAYER_CASES])
def test_layer_with_drops_on_layout(spec, shards, top_k, factor):
    cfg = CFG.replace(top_k=top_k, capacity_factor=factor)
    stats, keep = check_layer(cfg, spec, shards)
    assert 0 < (~keep).sum() < keep.size  # the capacity bites, but not everywhere


def test_chunks_change_nothing():
    """ep with the capacity buffer sent in 1, 2 (padded) or 3 chunks: same drops, same numbers."""
    cfg = CFG.replace(capacity_factor=2.5)
    (y1, s1, g1), *_ = run_layer(cfg, "ep")
    for chunks in (2, 3):
        (y, s, g), *_ = run_layer(cfg, f"ep:chunks={chunks}")
        assert rel_err(y1, y) < 1e-6 and rel_err(g1, g) < 1e-6
        assert s["dropped"] == s1["dropped"]


# ----------------------------------------------------------------------------- the whole model

@pytest.fixture(scope="module")
def model_run():
    """helpers.run (output, stats, gradients of sum(y·ct) wrt params and x), remembered."""
    cache = {}

    def get(cfg, spec):
        if (cfg, spec) not in cache:
            out = run(cfg, spec)
            cache[cfg, spec] = out["y"], out["stats"], out["grads"]
        return cache[cfg, spec]
    return get


@pytest.mark.parametrize("spec", ["ep", "ep:chunks=2", "helix-ep",
                                  "tp-pp:tp=8,pp=2,microbatches=2"])
def test_model_matches_single(model_run, spec):
    cfg = CFG.replace(capacity_factor=ROOMY)
    y0, s0, g0 = model_run(cfg, "single")
    y, s, g = model_run(cfg, spec)
    assert_trees_close({"output": y0}, {"output": y}, TOL)
    assert_trees_close(g0, g, TOL, "gradient ")
    assert s["dropped"].tolist() == [0, 0] and s["routed"].tolist() == [256, 256]
    np.testing.assert_allclose(s["z_loss"], s0["z_loss"], rtol=TOL)
    if "microbatches" not in spec:  # the pipeline averages the per-microbatch Switch losses
        np.testing.assert_allclose(s["aux_loss"], s0["aux_loss"], rtol=TOL)


# ----------------------------------------------------------------------------- collectives

def forward_collectives(cfg, spec) -> Counter:
    sharded = Sharded.build(cfg, parse_layout(spec))
    hlo = sharded.forward_fn().lower(*sharded.abstract_inputs()).compile().as_text()
    return Counter((c.op, c.group_size, c.trip_count) for c in collectives(hlo))


@pytest.mark.parametrize("chunks", [1, 2])
def test_ep_collectives(chunks):
    """ep=16 forward, per layer (the layer scan: trip count L = 2): K all-to-alls out and K back
    over all 16 devices, and one all-reduce of the stats sums (a tuple of [E] first-choice
    counts, [E] router probabilities, dropped and z sums). Attention is data parallel: nothing."""
    L = CFG.n_layers
    assert forward_collectives(CFG, f"ep:chunks={chunks}") == Counter(
        {("all-to-all", 16, L): 2 * chunks, ("all-reduce", 16, L): 1})


def test_helix_ep_collectives():
    """helix-ep (n=4 head groups x m=4 dim slices) forward, per layer: the score psum over the 4
    dim slices of a head group, the attention output all-reduce over 16, and the MoE combine
    all-reduce over the 16 expert shards. Dispatch is local; tokens are not sharded, so the stats
    need no reduction."""
    L = CFG.n_layers
    assert forward_collectives(CFG, "helix-ep") == Counter(
        {("all-reduce", 4, L): 1, ("all-reduce", 16, L): 2})


# ----------------------------------------------------------------------------- pieces

class PureRoutingFunctions(chex.TestCase):
    """The routing pieces are pure functions that run both inside jit (the model) and eagerly
    (the reference loops): each is checked in both forms."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_route_ties_and_weights(self):
        logits = jnp.array([[0.0, 0.0, 0.0, 0.0], [1.0, 3.0, 3.0, 2.0]])
        routed = self.variant(route, static_argnums=(1, 2))
        idx, w = routed(logits, 2, None)  # None: renormalised, as k > 1
        chex.assert_shape((idx, w), (2, 2))
        chex.assert_type(idx, int)
        np.testing.assert_array_equal(idx, [[0, 1], [1, 2]])  # ties go to the lower index
        chex.assert_trees_all_close(w, jnp.full((2, 2), 0.5), rtol=1e-6)
        _, raw = routed(logits, 2, False)  # not renormalised: the chosen probabilities
        chex.assert_trees_all_close(
            raw, jnp.take_along_axis(jax.nn.softmax(logits), idx, axis=1), rtol=1e-6)
        idx, w = routed(logits, 1, False)
        chex.assert_trees_all_close(w[:, 0], jax.nn.softmax(logits)[jnp.arange(2), idx[:, 0]],
                                    rtol=1e-6)
        _, w = routed(logits, 1, True)
        chex.assert_trees_all_close(w, jnp.ones((2, 1)))

    @chex.variants(with_jit=True, without_jit=True)
    def test_buffer_positions_first_choices_first(self):
        idx = jnp.array([[0, 1], [0, 2], [1, 0]])
        # rank 0: t0->e0 slot 0, t1->e0 slot 1, t2->e1 slot 0; rank 1: t0->e1 1, t1->e2 0, t2->e0 2
        got = self.variant(buffer_positions, static_argnums=(1,))(idx, 3)
        np.testing.assert_array_equal(got, [[0, 1], [1, 0], [0, 2]])

    @chex.variants(with_jit=True, without_jit=True)
    def test_aux_loss_formula(self):
        loss = self.variant(aux_loss, static_argnums=(2,))
        probs = jnp.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
        idx = jnp.array([[0], [0], [1], [0]])
        # f = (3/4, 1/4), P = (0.65, 0.35): 2 · (0.75 · 0.65 + 0.25 · 0.35) = 1.15
        chex.assert_trees_all_close(loss(probs, idx, 2), jnp.float32(1.15), rtol=1e-6)
        uniform = jnp.full((16, 4), 0.25)
        chex.assert_trees_all_close(loss(uniform, jnp.arange(16)[:, None] % 4, 4),
                                    jnp.float32(1.0), rtol=1e-6)


def test_capacity_formula():
    assert capacity(16, 1, 16, 1.25) == 2  # ceil(1.25)
    assert capacity(512, 2, 16, 1.0) == 64
    assert capacity(1, 1, 16, 0.1) == 1
    assert capacity(640000, 1, 16, 1.25) == math.ceil(1.25 * 640000 / 16)


def test_bad_configs_are_explained():
    with pytest.raises(ValueError, match="n_experts=12 is not divisible by the 16"):
        check_moe(CFG.replace(n_experts=12), parse_layout("ep"))
    with pytest.raises(ValueError, match="top_k=17 is more than n_experts=16"):
        CFG.replace(top_k=17)
    with pytest.raises(ValueError, match="chunks=4 is more than the capacity C=2"):
        check_moe(CFG, parse_layout("ep:chunks=4"))
    with pytest.raises(ValueError, match="batch=8 leaves no tokens"):
        check_moe(CFG.replace(batch=8), parse_layout("ep"))
    mixed = Layout("mixed", ("a", "b"), (4, 4), {"batch": ("a",), "expert": ("a", "b")})
    with pytest.raises(ValueError, match="must either all shard the tokens"):
        check_moe(CFG, mixed)
    check_moe(CFG, parse_layout("ep:chunks=2"))  # fine
    check_moe(resolve_model("tiny-dense"), parse_layout("helix"))  # dense: nothing to check
