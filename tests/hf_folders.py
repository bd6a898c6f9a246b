"""Small random Hugging Face checkpoint folders written from NumPy, with the tensor names and
config keys `transformers`' save_pretrained uses for each model_type (no torch needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

# Small shapes every test layout can split: 8 query heads over 2 K/V heads, head_dim 8.
SHAPE = dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=2, head_dim=8,
             intermediate_size=128, vocab_size=128, num_hidden_layers=2, rms_norm_eps=1e-6,
             rope_theta=10000.0, max_position_embeddings=256)

CONFIGS = {
    "llama": dict(SHAPE, attention_bias=False, mlp_bias=False, tie_word_embeddings=False),
    "mistral": dict(SHAPE, sliding_window=None, tie_word_embeddings=False),
    "qwen2": dict(SHAPE, use_sliding_window=False, tie_word_embeddings=True),
    "qwen3": dict(SHAPE, attention_bias=False, tie_word_embeddings=True),
    "mixtral": dict(SHAPE, intermediate_size=64, num_local_experts=8, num_experts_per_tok=2,
                    sliding_window=None),
    "qwen3_moe": dict(SHAPE, intermediate_size=96, moe_intermediate_size=32, num_experts=8,
                      num_experts_per_tok=2, norm_topk_prob=False, decoder_sparse_step=1,
                      mlp_only_layers=[0]),
    "gpt2": dict(n_embd=64, n_head=8, n_layer=2, n_positions=64, vocab_size=128,
                 activation_function="gelu_new", layer_norm_epsilon=1e-5),
}


def _llama_tensors(c: dict, kind: str, rng) -> dict[str, np.ndarray]:
    D, H, G, d = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    F, V = c["intermediate_size"], c["vocab_size"]

    def w(*shape, scale=None):
        return (rng.standard_normal(shape) * (scale or shape[-1] ** -0.5)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    t = {"embed_tokens.weight": w(V, D, scale=1.0), "norm.weight": norm(D)}
    for i in range(c["num_hidden_layers"]):
        L = f"layers.{i}."
        t |= {L + "input_layernorm.weight": norm(D), L + "post_attention_layernorm.weight": norm(D),
              L + "self_attn.q_proj.weight": w(H * d, D), L + "self_attn.k_proj.weight": w(G * d, D),
              L + "self_attn.v_proj.weight": w(G * d, D), L + "self_attn.o_proj.weight": w(D, H * d)}
        if kind == "qwen2":  # q, k, v biases
            t |= {L + f"self_attn.{n}_proj.bias": w(m, scale=0.1)
                  for n, m in (("q", H * d), ("k", G * d), ("v", G * d))}
        if kind in ("qwen3", "qwen3_moe"):
            t |= {L + "self_attn.q_norm.weight": norm(d), L + "self_attn.k_norm.weight": norm(d)}
        if kind == "mixtral":
            M, E = L + "block_sparse_moe.", c["num_local_experts"]
            t[M + "gate.weight"] = w(E, D)
            for e in range(E):
                t |= {f"{M}experts.{e}.w1.weight": w(F, D), f"{M}experts.{e}.w3.weight": w(F, D),
                      f"{M}experts.{e}.w2.weight": w(D, F)}
        elif kind == "qwen3_moe" and i not in c["mlp_only_layers"]:
            M, E, Fe = L + "mlp.", c["num_experts"], c["moe_intermediate_size"]
            t[M + "gate.weight"] = w(E, D)
            for e in range(E):
                t |= {f"{M}experts.{e}.gate_proj.weight": w(Fe, D),
                      f"{M}experts.{e}.up_proj.weight": w(Fe, D),
                      f"{M}experts.{e}.down_proj.weight": w(D, Fe)}
        else:
            t |= {L + "mlp.gate_proj.weight": w(F, D), L + "mlp.up_proj.weight": w(F, D),
                  L + "mlp.down_proj.weight": w(D, F)}
    return t


def _gpt2_tensors(c: dict, rng) -> dict[str, np.ndarray]:
    D, V, P = c["n_embd"], c["vocab_size"], c["n_positions"]

    def w(*shape, scale=None):
        return (rng.standard_normal(shape) * (scale or shape[0] ** -0.5)).astype(np.float32)

    t = {"wte.weight": w(V, D, scale=1.0), "wpe.weight": w(P, D, scale=0.3),
         "ln_f.weight": w(D, scale=0.1) + 1, "ln_f.bias": w(D, scale=0.1)}
    for i in range(c["n_layer"]):
        L = f"h.{i}."
        t |= {L + "ln_1.weight": w(D, scale=0.1) + 1, L + "ln_1.bias": w(D, scale=0.1),
              L + "ln_2.weight": w(D, scale=0.1) + 1, L + "ln_2.bias": w(D, scale=0.1),
              L + "attn.c_attn.weight": w(D, 3 * D), L + "attn.c_attn.bias": w(3 * D, scale=0.1),
              L + "attn.c_proj.weight": w(D, D), L + "attn.c_proj.bias": w(D, scale=0.1),
              L + "mlp.c_fc.weight": w(D, 4 * D), L + "mlp.c_fc.bias": w(4 * D, scale=0.1),
              L + "mlp.c_proj.weight": w(4 * D, D), L + "mlp.c_proj.bias": w(D, scale=0.1)}
    return t


def write_hf(folder: Path, kind: str, seed: int = 0, causal_lm: bool = True, shards: int = 1,
             **config) -> dict[str, np.ndarray]:
    """Write a random `kind` checkpoint into `folder` (created): config.json and the weights,
    under the causal-LM prefix (`model.` / `transformer.`, with lm_head unless tied) or as a
    base model, in one file or `shards` files with an index. Returns the tensors by name."""
    c = {**CONFIGS[kind], **config, "model_type": kind}
    rng = np.random.default_rng(seed)
    t = _gpt2_tensors(c, rng) if kind == "gpt2" else _llama_tensors(c, kind, rng)
    if causal_lm:
        prefix = "transformer." if kind == "gpt2" else "model."
        t = {prefix + k: v for k, v in t.items()}
        if not c.get("tie_word_embeddings", kind == "gpt2"):
            D = c.get("hidden_size", c.get("n_embd"))
            t["lm_head.weight"] = (rng.standard_normal((c["vocab_size"], D)) * D**-0.5
                                   ).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(c, indent=2))
    names = sorted(t)
    if shards == 1:
        save_file(t, str(folder / "model.safetensors"))
    else:
        weight_map = {}
        for j in range(shards):
            file = f"model-{j + 1:05d}-of-{shards:05d}.safetensors"
            part = names[j::shards]
            save_file({n: t[n] for n in part}, str(folder / file))
            weight_map |= {n: file for n in part}
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}))
    return t
