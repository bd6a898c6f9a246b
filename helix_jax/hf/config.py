"""config.json of a Hugging Face checkpoint -> ModelConfig, refusing what is not implemented.

The mapping follows `transformers`' conventions per model_type: Llama-style models (llama,
mistral, qwen2, qwen3, mixtral, qwen3_moe) are RMSNorm + rotary + SwiGLU with grouped-query
attention; gpt2 is LayerNorm + learned positions + GELU (tanh) with every bias and a tied head.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helix_jax.config import ModelConfig

LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen3_moe")
MODEL_TYPES = LLAMA_LIKE + ("gpt2",)
# The run shape a checkpoint gets until --batch/--seq/--dtype say otherwise.
HF_RUN = dict(batch=1, seq=128, dtype="float32", q_block=1024, kv_block=1024)


def read_config_json(folder: str | Path) -> dict[str, Any]:
    """The parsed config.json of `folder`; one-line errors for a missing folder or file."""
    from helix_jax.files import input_file

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is a file, not a folder"
        raise ValueError(f"--hf {folder} {what}; give a folder holding config.json and "
                         f"model.safetensors (as save_pretrained writes them)")
    path = input_file(folder / "config.json", "--hf", "a Hugging Face config.json")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--hf {folder}: config.json is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--hf {folder}: config.json is not a JSON object")
    return data


def _refuse(folder, what: str) -> ValueError:
    return ValueError(f"--hf {folder}: {what} is not implemented here; this checkpoint cannot "
                      f"run without it (nothing is approximated)")


def _rope_theta(c: dict, folder) -> float:
    """rope_theta, refusing any RoPE scaling (llama3, yarn, linear, dynamic, ...)."""
    params = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type")) or params.get("rope_type") or "default"
    if kind != "default":
        raise _refuse(folder, f"RoPE scaling of type {kind!r}")
    if c.get("partial_rotary_factor", 1.0) != 1.0:
        raise _refuse(folder, "partial rotary embeddings (partial_rotary_factor < 1)")
    return float(params.get("rope_theta", c.get("rope_theta", 10000.0)))


def _llama_like(c: dict, kind: str, folder) -> dict[str, Any]:
    act = c.get("hidden_act", "silu")
    if act != "silu":
        raise _refuse(folder, f"hidden_act {act!r} (the SwiGLU FFN of these models uses silu)")
    if c.get("use_sliding_window", kind in ("mistral", "mixtral")) and c.get("sliding_window"):
        window = int(c["sliding_window"])
    else:
        window = 0
    heads = int(c["num_attention_heads"])
    d_model = int(c["hidden_size"])
    bias = bool(c.get("attention_bias", False))
    out = dict(
        n_layers=int(c["num_hidden_layers"]), d_model=d_model, n_heads=heads,
        n_kv_heads=int(c.get("num_key_value_heads") or heads),
        head_dim=int(c.get("head_dim") or d_model // heads), d_ff=int(c["intermediate_size"]),
        vocab=int(c["vocab_size"]), ffn="swiglu", norm="rmsnorm", position="rope",
        rope_theta=_rope_theta(c, folder), ln_eps=float(c.get("rms_norm_eps", 1e-6)),
        qk_norm=kind in ("qwen3", "qwen3_moe"), attn_bias=bias or kind == "qwen2",
        attn_out_bias=bias, mlp_bias=bool(c.get("mlp_bias", False)),
        tie_embeddings=bool(c.get("tie_word_embeddings", False)), sliding_window=window)
    if kind == "mixtral":
        out.update(n_experts=int(c["num_local_experts"]), top_k=int(c["num_experts_per_tok"]),
                   normalize_top_k=True)
    if kind == "qwen3_moe":
        out.update(_qwen3_moe(c, out["n_layers"], folder))
    return out


def _qwen3_moe(c: dict, n_layers: int, folder) -> dict[str, Any]:
    if int(c.get("decoder_sparse_step", 1)) != 1:
        raise _refuse(folder, "decoder_sparse_step other than 1 (MoE layers interleaved with "
                              "dense ones)")
    dense = list(c.get("mlp_only_layers") or [])
    if dense != list(range(len(dense))):
        raise _refuse(folder, f"mlp_only_layers {dense} (only leading dense layers are)")
    experts = c.get("num_experts", c.get("num_local_experts"))  # the Hub's name, and v5's
    if experts is None:
        raise KeyError("num_experts")
    return dict(n_experts=int(experts), top_k=int(c["num_experts_per_tok"]),
                moe_d_ff=int(c["moe_intermediate_size"]), first_dense_layers=len(dense),
                normalize_top_k=bool(c.get("norm_topk_prob", False)))


def _gpt2(c: dict, folder) -> dict[str, Any]:
    act = c.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise _refuse(folder, f"activation_function {act!r} (GELU with the tanh approximation "
                              f"is)")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if c.get(flag):
            raise _refuse(folder, flag)
    if c.get("scale_attn_weights", True) is False:
        raise _refuse(folder, "attention without the 1/sqrt(head_dim) scale")
    d_model, heads = int(c["n_embd"]), int(c["n_head"])
    return dict(n_layers=int(c["n_layer"]), d_model=d_model, n_heads=heads,
                head_dim=d_model // heads, d_ff=int(c.get("n_inner") or 4 * d_model),
                vocab=int(c["vocab_size"]), max_positions=int(c.get("n_positions", 1024)),
                position="learned", ln_eps=float(c.get("layer_norm_epsilon", 1e-5)),
                attn_bias=True, attn_out_bias=True, mlp_bias=True,
                tie_embeddings=bool(c.get("tie_word_embeddings", True)))


def config_from_hf(folder: str | Path, **run) -> ModelConfig:
    """The ModelConfig of the checkpoint in `folder`, with the run shape `run` (non-None values
    override HF_RUN). Unsupported model types and features are one-line ValueErrors."""
    c = read_config_json(folder)
    kind = c.get("model_type")
    if kind not in MODEL_TYPES:
        raise ValueError(f"--hf {folder}: model_type {kind!r} is not supported; supported: "
                         f"{', '.join(MODEL_TYPES)}")
    if "kv_lora_rank" in c or "q_lora_rank" in c:
        raise _refuse(folder, "multi-head latent attention (MLA)")
    try:
        shape = _gpt2(c, folder) if kind == "gpt2" else _llama_like(c, kind, folder)
    except KeyError as e:
        raise ValueError(f"--hf {folder}: config.json lacks {e.args[0]!r}, which a "
                         f"{kind} config has") from None
    except (TypeError, ValueError) as e:
        if str(e).startswith("--hf"):
            raise
        raise ValueError(f"--hf {folder}: config.json has a value of the wrong type ({e})") from None
    name = Path(folder).expanduser().resolve().name or "hf"
    settings = {**HF_RUN, **{k: v for k, v in run.items() if v is not None}}
    try:
        return ModelConfig(name=name, **shape, **settings)
    except ValueError as e:
        raise ValueError(f"--hf {folder}: {e}") from None
