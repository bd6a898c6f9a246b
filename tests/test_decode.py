"""Prefill and decode with a KV cache on every layout: the same outputs as the float64
reference, the collectives the math says, the cache updated in place, and clear errors."""


import jax
import jax.numpy as jnp
import pytest

from helix_jax import npz
from helix_jax.analysis import collectives
from helix_jax.config import resolve_model
from helix_jax.decode import run_decode
from helix_jax.layouts import parse_layout
from helix_jax.model import Sharded, random_input
from tests import reference_np
from tests.cli_run import helix_here

S = 16
# Each layout's decode against the float64 reference on the multi-head models; the same
# mechanisms with grouped-query heads and RoPE are checked in tests/test_families.py.
DENSE = ("single", "dp:dp=4", "tp-pp", "helix", "helix:core=seq_a2a", "kvp:kvp=4,tp=2",
         "helix:m=2,n=2,dp=4", "tp-pp:tp=4,pp=1,sp=true")
MOE = ("single", "ep", "helix-ep", "tp-pp", "kvp:kvp=4")


def _check(model: str, spec: str, tmp_path) -> None:
    """Prefill P = 1 (a one-position prefill, then a decode step at every later position up to
    S - 1) and P = S/2 (a many-position prefill, then decode): the float64 reference holds."""
    cfg = resolve_model(model).replace(seq=S, capacity_factor=16.0)
    sharded = Sharded.build(cfg, parse_layout(spec))
    params = sharded.init(0)
    x = random_input(cfg, 0)
    step = sharded.step_fn()
    for prompt in (1, S // 2):
        run = run_decode(sharded, params, jax.device_put(x, sharded.input_sharding), prompt, step)
        assert run.output.shape == (cfg.batch, S, cfg.d_model) and len(run.step_s) == S - prompt
        path = tmp_path / f"decode{prompt}.npz"
        npz.save(path, cfg, jax.device_get(params), jax.device_get(x), run.output)
        p, xx, y, c = reference_np.load_npz(path)
        err = reference_np.relative_error(reference_np.forward(p, xx, c), y)
        assert err <= 1e-4, (spec, prompt, err)


@pytest.mark.parametrize("spec", DENSE)
def test_decode_matches_the_reference_dense(spec, tmp_path):
    _check("tiny-dense", spec, tmp_path)


@pytest.mark.parametrize("spec", MOE)
def test_decode_matches_the_reference_moe(spec, tmp_path):
    _check("tiny-moe", spec, tmp_path)


@pytest.mark.parametrize("spec", ("kvp:kvp=4", "kvp:kvp=2,tp=2,dp=2"))
def test_kvp_forward_equals_single(spec):
    """The plain forward pass under kvp (keys split along the sequence, partial outputs combined
    by their log-sum-exp): the same outputs and gradients as one device."""
    from tests.helpers import assert_same_model, run

    cfg = resolve_model("tiny-dense").replace(batch=8, seq=16)
    assert_same_model(run(cfg, "single"), run(cfg, spec))


def _decode_hlo(spec: str, context: int, model: str = "tiny-dense") -> str:
    from helix_jax.analysis.costmodel.compiler import compile_step

    cfg = resolve_model(model).replace(seq=context, kv_block=0)
    return compile_step(Sharded.build(cfg, parse_layout(spec)), "decode").as_text()


def test_kvp_exchange_does_not_grow_with_the_context():
    """kvp combines partial outputs and their log-sum-exp: one max and two sums per layer whose
    payloads are [B, 1, h, d], [B, h, 1] and [B, h, 1], at any context."""
    def exchange(context):
        return sorted((c.op, c.group_size, c.payload_bytes, c.trip_count)
                      for c in collectives(_decode_hlo("kvp:kvp=4", context)) if c.group_size == 4)
    short, long = exchange(32), exchange(128)
    assert short == long and short
    cfg = resolve_model("tiny-dense")
    B, h, d = cfg.batch, cfg.n_heads, cfg.head_dim
    per_layer = {("all-reduce", B * h * d * 4), ("all-reduce", B * h * 4)}
    assert {(op, b) for op, _, b, _ in short} >= per_layer


def test_score_psum_reduces_the_partial_scores_of_one_query():
    """At decode helix score_psum sums [B, H/n, 1, C] partial scores over the m head-dim shards
    (and never gathers keys); qk_gather gathers the key cache instead."""
    cfg = resolve_model("tiny-dense")
    B, H, C = cfg.batch, cfg.n_heads, 64
    found = [c for c in collectives(_decode_hlo("helix", C)) if c.group_size == 4
             and c.op == "all-reduce"]
    assert any(c.operand_shapes[0] == (B, H // 4, 1, C) for c in found), found
    gathers = [c for c in collectives(_decode_hlo("helix:core=qk_gather", C))
               if c.op == "all-gather"]
    assert any(C in c.result_shapes[0] for c in gathers)


@pytest.mark.parametrize("spec", ("single", "kvp:kvp=4", "helix"))
def test_the_decode_step_updates_the_cache_in_place(spec):
    """The cache is donated and aliased to the step's output, and no kernel copies it whole."""
    cfg = resolve_model("tiny-dense").replace(seq=64)
    sharded = Sharded.build(cfg, parse_layout(spec))
    hlo = _decode_hlo(spec, 64)
    assert "input_output_alias" in hlo.split("\n", 1)[0]
    local = sharded.cache_spec
    shape = list(sharded.cache_shape(64))
    for dim, axes in enumerate(local):
        if axes:
            shape[dim] //= sharded.layout.size_of(axes if isinstance(axes, tuple) else (axes,))
    text = "[" + ",".join(map(str, shape)) + "]"
    copies = [line for line in hlo.splitlines() if text in line.split("=", 1)[-1][:80]
              and any(f" {op}(" in line for op in ("copy", "transpose", "concatenate"))]
    assert not copies, copies[:3]


def test_the_decode_step_compiles_once():
    import chex

    cfg = resolve_model("tiny-dense").replace(seq=S)
    sharded = Sharded.build(cfg, parse_layout("helix"))
    params, cache = sharded.init(0), sharded.init_cache(S)
    x = random_input(cfg, 0)
    step = sharded.step_fn()
    traced = chex.assert_max_traces(n=1)(sharded.local_step)
    step = jax.jit(jax.shard_map(traced, mesh=sharded.mesh,
                                 in_specs=(sharded.param_specs, {"k": sharded.cache_spec,
                                                                 "v": sharded.cache_spec},
                                           sharded.step_input_spec, jax.P()),
                                 out_specs=(jax.P(None, None, None),
                                            {"k": sharded.cache_spec, "v": sharded.cache_spec},
                                            sharded.stats_specs)), donate_argnums=(1,))
    for t in range(4, 8):
        _, cache, _ = step(params, cache, x[:, t:t + 1], jnp.int32(t))


@pytest.mark.parametrize("args, message", [
    (["--prompt-len", "0"], "--prompt-len 0 must be between 1 and seq - 1 = 31"),
    (["--prompt-len", "32"], "--prompt-len 32 must be between 1 and seq - 1 = 31"),
    (["--prompt-len", "4", "--layout", "kvp:kvp=16", "--seq", "24"],
     "split round-robin over kvp=16 devices; choose a seq divisible by 16"),
    (["--prompt-len", "4", "--generate", "2"], "--generate N needs N >= 1 and a model file"),
    (["--prompt-len", "4", "--out", "/no/such/dir/d.npz"], "folder /no/such/dir does not exist"),
])
def test_bad_decode_inputs_are_one_line_errors(args, message, tmp_path):
    r = helix_here(["decode", "--model", "tiny-dense",
                    *(["--layout", "helix"] if "--layout" not in args else []), *args], tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and message in r.stderr, r.stderr


def test_decode_and_prefill_projections_are_never_below_their_hbm_time():
    from helix_jax.analysis.costmodel.hardware import HARDWARE
    from helix_jax.analysis.costmodel.project import project

    cfg = resolve_model("tiny-dense").replace(seq=64)
    for mode in ("prefill", "decode"):
        for spec in ("helix", "kvp:kvp=4"):
            r = project(cfg, parse_layout(spec), HARDWARE["dgx-h100"], mode=mode)
            p = r.projected
            assert p.step_seconds >= p.hbm_floor_seconds > 0
            assert r.tokens_per_step == cfg.batch * (64 if mode == "prefill" else 1)


@pytest.mark.parametrize("spec, kv_heads_per_device, stages", [
    ("tp-pp:tp=2,pp=2,microbatches=1", 1, 2),  # K/V heads split: one of the two per device
    ("tp-pp:tp=8,pp=1,microbatches=1", 1, 1),  # tp past the K/V heads: each caches the one it uses
    ("helix:m=2,n=8", 0.5, 1),  # the head-dim split halves every head
])
def test_the_hbm_floor_counts_the_device_cache_and_each_pipeline_stage(spec, kv_heads_per_device,
                                                                         stages):
    """The floor's terms by hand for GQA (tiny-llama: 2 K/V heads): the cache a device holds,
    and a step that walks p stages reads p stages' bytes in turn."""
    from helix_jax.analysis.costmodel.hardware import HARDWARE
    from helix_jax.analysis.costmodel.project import project
    from helix_jax.counts import param_counts

    cfg = resolve_model("tiny-llama").replace(seq=64, batch=2, dtype="bfloat16")
    hw = HARDWARE["dgx-h100"]
    p = project(cfg, parse_layout(spec), hw, mode="decode").projected
    cache = 2 * (cfg.n_layers // stages) * cfg.batch * cfg.seq * kv_heads_per_device \
        * cfg.head_dim * 2
    assert p.hbm_floor_cache_bytes == cache
    total, _ = param_counts(cfg)
    assert p.hbm_floor_weight_bytes < total * 2  # a share of the weights, in 16 bits
    assert p.hbm_floor_seconds == pytest.approx(
        stages * (p.hbm_floor_cache_bytes + p.hbm_floor_weight_bytes) / hw.hbm_bytes_per_s)
