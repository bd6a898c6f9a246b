"""Today's model families on every layout: grouped-query attention, rotary positions, RMSNorm,
SwiGLU and top-k MoE (tiny-llama, tiny-mixtral) match one device in outputs and in the gradient
of every parameter; decoding equals the forward pass; Hugging Face folders of every supported
model_type run through `helix forward --hf` and match the float64 reference computed in
`transformers`' own conventions; the GQA collectives are what the math says; bad checkpoints
and model files are one-line errors."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from helix_jax import testing
from helix_jax.config import resolve_model
from helix_jax.decode import run_decode
from helix_jax.layouts import parse_layout
from helix_jax.model import Sharded, random_input
from tests import reference_np
from tests.cli_run import helix_here
from tests.hf_folders import CONFIGS, write_hf

ROOMY = 64.0  # a capacity factor at which no expert drops a token (HF MoE layers are dropless)

# tiny-llama: 8 query heads over 2 K/V heads, so every split of heads past 2 replicates K/V.
LLAMA_LAYOUTS = [
    "dp:dp=4", "dp:fsdp=true",
    "tp-pp:tp=2,pp=2",  # tp <= n_kv_heads: K/V heads split
    "tp-pp",  # tp = 8 > n_kv_heads: each K/V head replicated over 4 ranks
    "tp-pp:tp=4,pp=1,sp=true",
    "tp-pp:tp=2,pp=1,sp=true,dp=2",  # tp <= n_kv_heads with sp, and a dp=K composition
    "helix",  # n = 4 head groups > 2 K/V heads: shared K/V heads replicated
    "helix:m=4,n=2", "helix:core=seq_a2a", "helix:core=qk_gather,m=2,n=8",
    "kvp:kvp=4", "kvp:kvp=2,tp=4",
]
MIXTRAL_LAYOUTS = [
    "dp:fsdp=true", "tp-pp:tp=2,pp=2", "helix:m=2,n=4", "kvp:kvp=2,tp=4",
    "ep:ep=8", "ep:ep=4,dp=2",  # one expert per device; two per device (fine-grained)
    "helix-ep:m=2,n=4", "helix-ep:m=2,n=2",
]


@pytest.mark.parametrize("layout", LLAMA_LAYOUTS)
def test_tiny_llama_matches_single(layout):
    testing.assert_layout_equivalent("tiny-llama", layout)


@pytest.mark.parametrize("layout", MIXTRAL_LAYOUTS)
def test_tiny_mixtral_matches_single(layout):
    testing.assert_layout_equivalent("tiny-mixtral", layout, capacity_factor=ROOMY)


@pytest.mark.parametrize("layout", ["ep:ep=4", "helix-ep:m=2,n=4", "tp-pp:tp=4,pp=1,sp=true"])
def test_shared_experts_unnormalised_top_k_and_dense_first_layers(layout):
    """A fine-grained MoE as Qwen3 and DeepSeek build them: top-2 without renormalising, a
    shared expert beside the routed ones, squared-ReLU experts of their own width, and (outside
    pipelines) a leading dense layer."""
    overrides = dict(capacity_factor=ROOMY, normalize_top_k=False, n_shared_experts=1,
                     moe_d_ff=32, ffn="squared_relu", first_dense_layers=1)
    testing.assert_layout_equivalent("tiny-mixtral", layout, **overrides)


# One layout per decode mechanism: the replicated-K/V cache slot (tp > G) through a pipeline,
# each helix core with shared K/V heads, kvp with and without tensor parallelism, FSDP, and the
# MoE dispatches (tests/test_decode.py checks the multi-head models against the reference).
@pytest.mark.parametrize("model, layout", [
    ("tiny-llama", "single"), ("tiny-llama", "tp-pp"), ("tiny-llama", "helix"),
    ("tiny-llama", "helix:core=qk_gather,m=2,n=8"), ("tiny-llama", "helix:core=seq_a2a,m=2,n=8"),
    ("tiny-llama", "kvp:kvp=4"), ("tiny-llama", "kvp:kvp=2,tp=4"), ("tiny-llama", "dp:fsdp=true"),
    ("tiny-mixtral", "ep:ep=4"), ("tiny-mixtral", "helix-ep:m=2,n=4"),
])
def test_decode_equals_forward(model, layout):
    """Prefill P = 1, S/2, S - 1 tokens and decode the rest: the KV cache holds n_kv_heads heads
    (one per head shard where they are replicated), RoPE sits at each token's absolute
    position, and every output equals the forward pass on one device (the run the equivalence
    tests above compare with, shared)."""
    cfg = resolve_model(model, capacity_factor=ROOMY)
    S = cfg.seq
    want = testing.single_run(cfg)["y"]
    sharded = Sharded.build(cfg, parse_layout(layout))
    params = sharded.place(testing.random_params(cfg))
    x = jax.device_put(random_input(cfg, 0), sharded.input_sharding)
    step = sharded.step_fn()
    for prompt in (1, S // 2, S - 1):
        run = run_decode(sharded, params, x, prompt, step)
        testing.assert_trees_close(want, run.output, 1e-5, f"prompt {prompt}: ")
    local = sharded.cache_shape(S)[3] // sharded.layout.size(sharded.cache_axes[3])
    assert local == max(1, cfg.kv_heads // sharded.layout.size("heads"))


@pytest.mark.parametrize("kind, layout", [
    ("llama", "tp-pp"), ("mistral", "helix"), ("qwen2", "kvp:kvp=4,tp=2"),
    ("qwen3", "helix:core=seq_a2a"), ("mixtral", "ep:ep=4"), ("qwen3_moe", "helix-ep:m=2,n=4"),
    ("gpt2", "tp-pp:tp=4,pp=1,sp=true"),
])
def test_hf_folder_runs_and_matches_transformers_conventions(tmp_path, kind, layout):
    """`helix forward --hf DIR --layout L --out f.npz` on a folder written as save_pretrained
    writes it: `input` is the tokens, `output` the final hidden states (last_hidden_state),
    equal to the float64 reference computed from the checkpoint's own tensors and conventions;
    and the npz holds the weights in the contract that the npz reference reads."""
    folder = tmp_path / kind
    # base models (no prefix; mistral's untied head absent) and causal-LM ones; one in shards
    tensors = write_hf(folder, kind, causal_lm=kind not in ("qwen3", "mistral"),
                       shards=2 if kind == "llama" else 1)
    out = tmp_path / "f.npz"
    r = helix_here(["forward", "--hf", str(folder), "--layout", layout, "--batch", "16",
                    "--seq", "32", "--repeat", "0", "--capacity-factor", str(ROOMY),
                    "--out", str(out)])
    assert r.returncode == 0, r.stderr
    assert ("has no lm_head" in r.stderr) == (kind == "mistral"), r.stderr
    params, tokens, y, cfg = reference_np.load_npz(out)
    assert tokens.dtype.kind == "i" and tokens.shape == (16, 32)
    want = reference_np.hf_forward(tensors, {**CONFIGS[kind], "model_type": kind}, tokens)
    assert reference_np.relative_error(want, y) <= 1e-4
    assert reference_np.relative_error(reference_np.forward(params, tokens, cfg), y) <= 1e-4


def test_assert_layout_equivalent_takes_an_hf_folder(tmp_path):
    write_hf(tmp_path / "q", "qwen3")
    testing.assert_layout_equivalent(tmp_path / "q", "helix", batch=16, seq=16)


def _records(layout: str, **overrides) -> set[tuple]:
    """(op, group size, executions, first operand shape) of the compiled forward of tiny-llama."""
    cfg = resolve_model("tiny-llama").replace(**overrides)
    return {(c.op, c.group_size, c.count, c.shape) for c in testing.collectives(cfg, layout)}


def test_tp_past_the_kv_heads_adds_no_collective_for_keys_and_values():
    """tiny-llama on tp = 8 > 2 K/V heads: each rank projects its one K/V head from replicated
    weights, so the forward holds exactly the collectives it has with 8 K/V heads (split): the
    embedding's reduction and two per layer (attention and FFN outputs) over the 8 ranks, each
    [B, S, D], and the one-stage pipeline's trivial hand-off."""
    cfg = resolve_model("tiny-llama")
    B, S, D, L = cfg.batch, cfg.seq, cfg.d_model, cfg.n_layers
    want = {("all-reduce", 8, 1 + 2 * L, (B, S, D)), ("all-reduce", 1, 1, (B, S, D))}
    layout = "tp-pp:tp=8,pp=1,microbatches=1"
    assert _records(layout) == want
    assert _records(layout, n_kv_heads=8) == want


def test_helix_with_shared_kv_heads_keeps_the_paper_collectives():
    """helix n = 4 head groups over 2 K/V heads: per layer one partial-score all-reduce
    [B, H/n, S, S] in each group of m = 4 head-dim shards, and the embedding, attention and FFN
    outputs over all 16; the K/V heads shared by two groups are replicated, not communicated.
    With q/k RMSNorm the head-dim split adds, per layer, one sum of squares over the same 4
    shards (XLA combines q's and k's; the first operand is k's [B, S, 1, 1])."""
    cfg = resolve_model("tiny-llama")
    B, S, D, L, H = cfg.batch, cfg.seq, cfg.d_model, cfg.n_layers, cfg.n_heads
    plain = {("all-reduce", 4, L, (B, H // 4, S, S)), ("all-reduce", 16, 1 + 2 * L, (B, S, D))}
    assert _records("helix") == plain
    assert _records("helix", qk_norm=True) == plain | {("all-reduce", 4, L, (B, S, 1, 1))}


GOOD = dict(CONFIGS["llama"], model_type="llama")


@pytest.mark.parametrize("name, change, words", [
    ("unknown model_type", lambda f, c: c.update(model_type="deepseek_v3"),
     "model_type 'deepseek_v3' is not supported"),
    ("RoPE scaling", lambda f, c: c.update(rope_scaling={"rope_type": "llama3", "factor": 8.0}),
     "RoPE scaling of type 'llama3' is not implemented"),
    ("a sliding window", lambda f, c: c.update(model_type="mistral", sliding_window=16),
     "sliding-window attention (window 16) shorter than seq=32 is not implemented"),
    ("n_heads % n_kv_heads", lambda f, c: c.update(num_key_value_heads=3),
     "n_heads=8 is not a multiple of n_kv_heads=3"),
    ("head_dim odd with RoPE", lambda f, c: c.update(head_dim=7),
     "head_dim=7 is odd"),
    ("missing weights", lambda f, c: (f / "model.safetensors").unlink(), "the weights are missing"),
    ("a missing weight", lambda f, c: c.update(num_hidden_layers=3),
     "is missing (and 8 more); the checkpoint does not match its config.json"),
    ("a weight of the wrong shape", lambda f, c: c.update(intermediate_size=96),
     "layers.0.mlp.gate_proj.weight has shape (128, 64) but config.json implies (96, 64)"),
    ("garbage config", lambda f, c: c.clear(), "model_type None is not supported"),
])
def test_bad_checkpoints_are_one_line_errors(tmp_path, name, change, words):
    folder = tmp_path / "ck"
    write_hf(folder, "llama")
    config = dict(GOOD)
    change(folder, config)
    (folder / "config.json").write_text(json.dumps(config))
    r = helix_here(["forward", "--hf", str(folder), "--layout", "single", "--seq", "32"])
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("helix: error: "), r.stderr
    assert words in lines[0], lines[0]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("text, words", [
    ("n_kv_heads = 3\n", "n_heads=4 is not a multiple of n_kv_heads=3"),
    ('position = "rope"\nhead_dim = 15\n', "head_dim=15 is odd"),
    ('ffn = "relu"\n', "ffn = 'relu' is not one of gelu, swiglu, squared_relu"),
    ("moe_d_ff = 32\n", "moe_d_ff applies to mixture-of-experts models"),
])
def test_bad_model_files_name_the_key(tmp_path, text, words):
    base = 'name = "m"\nn_layers = 2\nd_model = 64\nn_heads = 4\nd_ff = 128\nvocab = 64\n'
    if "head_dim" not in text:
        base += "head_dim = 16\n"
    (tmp_path / "m.toml").write_text(base + text)
    r = helix_here(["project", "--model-file", str(tmp_path / "m.toml"), "--layout", "single"])
    assert r.returncode == 2 and words in r.stderr, r.stderr


@pytest.mark.parametrize("model, overrides", [
    ("tiny-llama", {}),
    ("tiny-llama", dict(ffn="squared_relu", n_kv_heads=1)),
    # capacity factor 1 with E dividing T·k: the buffers hold exactly T·k slots, as many as the
    # formula's top_k experts per token
    ("tiny-mixtral", dict(capacity_factor=1.0)),
    ("tiny-mixtral", dict(capacity_factor=1.0, n_shared_experts=2, moe_d_ff=32,
                          first_dense_layers=1)),
])
def test_model_flops_formula_equals_the_compiled_dot_flops(model, overrides):
    """The formula's model FLOPs per token (GQA projections, gated FFN, top-k experts of their
    own width, shared experts, router) times the tokens is what the compiled single-device
    forward multiplies, exactly (non-causal, whole-sequence attention blocks; the forward stops
    at the hidden states, so less the LM head's 2·D·V)."""
    from helix_jax.analysis.costmodel.formulas import forward_flops_per_token
    from helix_jax.analysis.hlo.flops import matmul_flops

    cfg = resolve_model(model).replace(causal=False, **overrides)
    compiled = matmul_flops(testing.compiled_text(cfg, "single", "forward"))["flops"]
    per_token = forward_flops_per_token(cfg) - 2 * cfg.d_model * cfg.vocab
    assert compiled == per_token * cfg.batch * cfg.seq


def test_megatron_training_flops_of_llama3_70b():
    """`project`'s model FLOPs per token in training are Megatron's formula for GQA + SwiGLU,
    3·[L·(4hHd + 4hGd + 4sHd + 6hF) + 2hV] (attention counted non-causal): 3.94e15 per
    8,192-token sequence of Llama-3-70B."""
    from helix_jax.analysis.costmodel.terms import model_flops_per_token

    c = resolve_model("llama3-70b", seq=8192)
    h, H, G, d, F, V, s = c.d_model, c.n_heads, c.kv_heads, c.head_dim, c.d_ff, c.vocab, c.seq
    megatron = 3 * (c.n_layers * (4 * h * H * d + 4 * h * G * d + 4 * s * H * d + 6 * h * F)
                    + 2 * h * V)
    assert model_flops_per_token(c, "train") == pytest.approx(megatron, rel=1e-12)
    assert model_flops_per_token(c, "train") * s == pytest.approx(3.94e15, rel=2e-3)


@pytest.mark.parametrize("preset, total, active, rel", [
    # exact: the total_size of the bfloat16 safetensors index on the Hub, halved
    ("llama3-8b", 8_030_261_248, None, 0), ("llama3-70b", 70_553_706_496, None, 0),
    ("mixtral-8x7b", 46_702_792_704, None, 0),
    # the model cards' rounded figures
    ("mixtral-8x7b", 46.7e9, 12.9e9, 5e-3), ("mixtral-8x22b", 141e9, 39e9, 5e-3),
    ("qwen3-30b-a3b", 30.5e9, 3.3e9, 2e-2), ("llama3.1-405b", 405e9, None, 5e-3),
])
def test_parameter_counts_match_the_published_sizes(preset, total, active, rel):
    from helix_jax.counts import param_counts

    cfg = resolve_model(preset)
    got_total, got_active = param_counts(cfg)
    assert got_total == pytest.approx(total, rel=rel)
    if active is not None:
        assert got_active == pytest.approx(active, rel=rel)
    elif not cfg.is_moe:
        assert got_active == got_total  # a dense model runs every parameter


def test_models_and_project_print_the_parameter_counts(tmp_path):
    r = helix_here(["models"])
    assert r.returncode == 0
    line = next(x for x in r.stdout.splitlines() if x.startswith("mixtral-8x7b "))
    assert "46.70B params (12.88B active)" in line and "(8 K/V)" in line
    out = tmp_path / "p.json"
    r = helix_here(["project", "--model", "tiny-mixtral", "--layout", "ep:ep=8", "--json", str(out)])
    assert r.returncode == 0, r.stderr
    from helix_jax.counts import param_counts

    d = json.loads(out.read_text())
    assert (d["params_total"], d["params_active"]) == param_counts(resolve_model("tiny-mixtral"))
    assert "params (" in r.stdout


def test_npz_round_trip_numbers_layers_in_model_order(tmp_path):
    """`--out` then `--params` on another layout: the same output. A MoE model with a leading
    dense layer stores it as layers.0 (mlp) and the MoE layer as layers.1 (moe), whatever the
    stacks inside, and the npz reference reads them so."""
    model = tmp_path / "m.toml"
    model.write_text('name = "m"\nn_layers = 2\nd_model = 64\nn_heads = 8\nhead_dim = 8\n'
                     'd_ff = 64\nvocab = 128\nn_kv_heads = 2\nffn = "swiglu"\nnorm = "rmsnorm"\n'
                     'position = "rope"\nmlp_bias = false\nn_experts = 8\ntop_k = 2\n'
                     'moe_d_ff = 32\nn_shared_experts = 1\nfirst_dense_layers = 1\n'
                     'capacity_factor = 64.0\n')
    run = ["forward", "--model-file", str(model), "--batch", "16", "--seq", "16", "--dtype",
           "float32", "--repeat", "0"]
    first, second = tmp_path / "a.npz", tmp_path / "b.npz"
    assert helix_here([*run, "--layout", "ep:ep=4", "--out", str(first)]).returncode == 0
    r = helix_here([*run, "--layout", "helix-ep:m=2,n=4", "--params", str(first),
                    "--out", str(second)])
    assert r.returncode == 0, r.stderr
    a, b = np.load(first), np.load(second)
    assert "layers.0.mlp.w3" in a.files and "layers.1.moe.shared.w3" in a.files
    assert not any(k.startswith("dense_layers") for k in a.files)
    np.testing.assert_allclose(a["output"], b["output"], rtol=0, atol=1e-5)
    params, tokens, y, cfg = reference_np.load_npz(first)
    assert reference_np.relative_error(reference_np.forward(params, tokens, cfg), y) <= 1e-4
