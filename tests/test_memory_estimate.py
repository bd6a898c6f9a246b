"""The GPU memory estimate (analysis/costmodel/memory.py): each part against arithmetic done here
by hand on tiny shapes, against the published formulas it follows (Megatron-LM's per-layer
activations and bytes per parameter), and against torchtitan's measured peak memory within the
stated tolerance."""

from pathlib import Path

import pytest

from helix_jax.analysis.costmodel import memory as M
from helix_jax.analysis.costmodel.project import build_sharded
from helix_jax.config import load_model_file, resolve_model
from helix_jax.layouts import parse_layout
from helix_jax.report import memory_validation as V

REPO = Path(__file__).resolve().parent.parent

GPT = resolve_model("tiny-dense", dtype="bfloat16")  # GELU FFN, multi-head, d_ff = 4 d_model
LLAMA = resolve_model("tiny-llama", dtype="bfloat16", qk_norm=True)  # GQA, SwiGLU, RoPE, RMSNorm


def test_a_plain_layer_keeps_what_the_backward_reads():
    """GELU, multi-head, one device: 2 norm inputs + q/k/v input + q, k, v + core output + FFN
    input (all [t, d]) + GELU input and output ([t, f]), 2 bytes each, + fp32 log-sum-exp."""
    t, d, f, h = 64, GPT.d_model, GPT.d_ff, GPT.n_heads
    assert GPT.n_heads * GPT.head_dim == d
    want = 2 * t * (2 * d + d + 3 * d + d + d + 2 * f) + 4 * t * h
    assert M.layer_activation_bytes(GPT, M.Split(tokens=t), "none") == want
    assert M.layer_activation_bytes(GPT, M.Split(tokens=t), "selective") == want
    assert M.layer_activation_bytes(GPT, M.Split(tokens=t), "full") == 2 * t * d


def test_grouped_query_swiglu_with_qk_norm():
    t, d, f = 32, LLAMA.d_model, LLAMA.d_ff
    q, kv = LLAMA.n_heads * LLAMA.head_dim, LLAMA.kv_heads * LLAMA.head_dim
    want = 2 * t * (3 * d + q + 2 * kv + q + (q + kv) + d + 3 * f) + 4 * t * LLAMA.n_heads
    assert M.layer_activation_bytes(LLAMA, M.Split(tokens=t), "none") == want
    halved = M.layer_activation_bytes(LLAMA, M.Split(tokens=t, kv_seq=2), "none")
    assert want - halved == 2 * t * 3 * kv / 2  # k, v and the k norm's input along the sequence


def test_tensor_split_keeps_kv_heads_whole_past_their_count():
    """tp = 4 over 2 K/V heads: each device keeps one K/V head (replicated, as Megatron does)."""
    t, tp = 32, 4
    split = M.Split(tokens=t, heads=tp, mlp=tp)
    q, kv = LLAMA.n_heads * LLAMA.head_dim / tp, 1 * LLAMA.head_dim
    want = (2 * t * (3 * LLAMA.d_model + q + 2 * kv + q + (q + kv) + LLAMA.d_model
                     + 3 * LLAMA.d_ff / tp) + 4 * t * LLAMA.n_heads / tp)
    assert M.layer_activation_bytes(LLAMA, split, "none") == pytest.approx(want)


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
@pytest.mark.parametrize("sp", [False, True])
def test_megatrons_per_layer_formula(tp, sp):
    """Korthikanti et al.'s Table 2 as Megatron-LM computes it: sbh(10 + 24/t) without and
    sbh(18 + 4f/h)/t with sequence parallelism (dropout masks, selective recompute)."""
    cfg = GPT.replace(dtype="float16")
    s, b, h = cfg.seq, 2, cfg.d_model
    split = M.Split(tokens=s * b, hidden=tp if sp else 1, heads=tp, mlp=tp, keys=s)
    ours = M.layer_activation_bytes(cfg, split, "selective", flash=False, dropout=True)
    want = s * b * h * ((18 + 4 * cfg.d_ff / h) / tp if sp else 10 + 24 / tp)
    assert ours == pytest.approx(want, rel=1e-12)


def test_an_unfused_core_keeps_its_scores_with_dropout():
    """Korthikanti et al.'s 5as^2b (softmax 2 bytes, dropout mask 1, dropout output 2)."""
    cfg, t = GPT.replace(dtype="float16"), GPT.seq
    split = M.Split(tokens=t, keys=t)
    scores = (M.layer_activation_bytes(cfg, split, "none", flash=False, dropout=True)
              - M.layer_activation_bytes(cfg, split, "selective", flash=False, dropout=True))
    assert scores == 5 * cfg.n_heads * t * t


def test_an_moe_layer_keeps_its_experts_at_capacity():
    cfg = resolve_model("tiny-mixtral", dtype="bfloat16")
    t, d = 32, cfg.d_model
    slots = cfg.capacity_factor * cfg.top_k * t
    q, kv = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    attention = 2 * t * (3 * d + q + 2 * kv + q) + 4 * t * cfg.n_heads
    ffn = 2 * t * d + 4 * t * cfg.n_experts + 2 * 2 * slots * d + 2 * 3 * slots * cfg.d_ff
    split = M.Split(tokens=t, expert_slots=slots)
    assert M.layer_activation_bytes(cfg, split, "none", moe=True) == pytest.approx(
        attention + ffn)


def test_full_recompute_keeps_inputs_and_one_layer_at_the_peak():
    split, L = M.Split(tokens=64), GPT.n_layers
    none = M.layer_activation_bytes(GPT, split, "none")
    full = M.layer_activation_bytes(GPT, split, "full")
    assert M.stage_activation_bytes(GPT, split, "full", L) == (L - 1) * full + none
    for layers in (1, 2, 5):  # what the planner's sibling rule relies on: less recompute, more
        kept = [M.stage_activation_bytes(GPT, split, r, layers) for r in
                ("none", "selective", "full")]
        assert kept[0] >= kept[1] >= kept[2]


@pytest.mark.parametrize("d", [1, 2, 8, 64])
def test_bytes_per_parameter_as_megatron_publishes_them(d):
    """Megatron-LM's dist_optimizer.md: bf16 params + fp32 grads 18 (6 + 12/d distributed),
    fp32 params + grads 16 (8 + 8/d)."""
    assert M.model_state_bytes(1, 2, d) == pytest.approx(18 if d == 1 else 6 + 12 / d)
    assert M.model_state_bytes(1, 4, d) == pytest.approx(16 if d == 1 else 8 + 8 / d)


def test_the_split_of_each_layout():
    cfg = resolve_model("tiny-mixtral")
    cases = {  # layout: (tokens of a microbatch of 2 sequences, [t, d] split, expert slots)
        "tp-pp:tp=2,pp=1,sp=true,microbatches=1": (2 * cfg.seq, 2, 1.0),
        "cp:cp=2": (cfg.seq, 1, 1.0),
        "ep:ep=4": (2 * cfg.seq, 1, 1.0),  # tokens pooled from the 4 ranks, over 4 ranks
        "helix-ep:m=2,n=4": (2 * cfg.seq, 1, 1 / 8),  # every rank holds the same tokens
    }
    assert M.split_of(cfg, parse_layout("kvp:kvp=4,tp=2"), 2).kv_seq == 4
    for spec, (tokens, hidden, share) in cases.items():
        split = M.split_of(cfg, parse_layout(spec), 2)
        assert (split.tokens, split.hidden) == (tokens, hidden), spec
        assert split.expert_slots == pytest.approx(
            cfg.capacity_factor * cfg.top_k * tokens * share), spec


def test_whole_program_states_replicated_or_sharded():
    """dp keeps 18 bytes per bf16 parameter on every rank; dp:fsdp=true 16 bytes per local
    parameter plus two gathered layers."""
    cfg = GPT.replace(batch=8)
    plain = M.whole_memory(build_sharded(cfg, parse_layout("dp:dp=4"), 1), 1)
    sharded = build_sharded(cfg, parse_layout("dp:dp=4,fsdp=true"), 1)
    fsdp = M.whole_memory(sharded, 1)
    local = M.local_parameter_count(sharded)
    assert plain["states"] == 18 * plain["parts"]["parameters_per_device"]
    assert local < plain["parts"]["parameters_per_device"]
    assert 16 * local < fsdp["states"] < plain["states"]
    assert fsdp["activations"] == plain["activations"]


def test_the_korthikanti_shapes_are_the_model_files():
    for cfg, name in ((V.GPT3_175B, "korthikanti-175b"), (V.GPT_22B, "korthikanti-22b")):
        file = load_model_file(REPO / "experiments" / "models" / f"{name}.toml")
        keys = ("n_layers", "d_model", "n_heads", "head_dim", "d_ff", "vocab")
        assert [getattr(cfg, k) for k in keys] == [getattr(file, k) for k in keys]


def test_published_figures_within_the_stated_tolerance():
    for row in V.formula_rows():
        assert abs(row["error"]) <= V.FORMULA_TOLERANCE, row
    rows = V.measured_rows()
    assert len(rows) == len(V.TORCHTITAN_ROWS)
    for row in rows:
        assert abs(row["error"]) <= V.MEASURED_TOLERANCE, row


def test_readme_quotes_the_committed_memory_validation():
    import json

    report = json.loads((REPO / "results" / "memory_validation.json").read_text())
    m = report["measured_summary"]
    readme = " ".join((REPO / "README.md").read_text().split())
    assert (f"{m['rows']} Llama 3.1 runs on H100 by {m['median_abs_error']:.1%} at the median "
            f"and {m['worst_abs_error']:.1%} at worst") in readme
