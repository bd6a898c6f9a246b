"""Independent float64 NumPy oracle for the helix_jax ``.npz`` forward-pass contract.

This module deliberately imports neither jax nor helix_jax. It reads an ``.npz``
file holding a transformer's parameters, an ``input`` [B,S,D], the library's
``output`` [B,S,D] and a ``config_json`` string, and recomputes the output in
float64 with plain NumPy so the library's result can be checked against it.

Architecture (pre-norm): for each layer ``x = x + Attn(N1(x)); x = x + FFN(N2(x))``,
then a final norm. N is LayerNorm or RMSNorm; attention is multi-head or grouped-query
(K/V heads repeated), with optional q/k RMSNorm and rotary positions; FFN is a tanh-GELU,
SwiGLU or squared-ReLU MLP, or (``n_experts > 0``) a top-k mixture of experts written as an
explicit per-expert loop, no capacity limit, with optional shared experts. ``hf_forward``
computes the same from a Hugging Face checkpoint's tensors in `transformers`' own conventions.

Script use::

    python tests/reference_np.py f.npz [--rtol 1e-4]

prints the max-abs relative error and the Frobenius relative error, and exits
1 if the max-abs relative error exceeds ``rtol``, else 0.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def load_npz(path):
    """Return ``(params, x, out, cfg)``; arrays as stored, params keyed by name."""
    with np.load(path, allow_pickle=False) as f:
        cfg = json.loads(str(f["config_json"]))
        x = np.asarray(f["input"])
        out = np.asarray(f["output"])
        params = {k: np.asarray(f[k]) for k in f.files if k not in ("input", "output", "config_json")}
    return params, x, out, cfg


def layer_norm(x, scale, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def rms_norm(x, scale, eps):
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * scale


def gelu(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def silu(x):
    return x / (1.0 + np.exp(-x))


def softmax(x, axis=-1):
    z = np.exp(x - x.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def causal_attention(q, k, v, causal=True):
    """q [B,S,H,d], k/v [B,S,G,d] (G divides H: query head h reads K/V head h // (H/G))."""
    k = np.repeat(k, q.shape[2] // k.shape[2], axis=2)
    v = np.repeat(v, q.shape[2] // v.shape[2], axis=2)
    scores = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
    if causal:
        S = q.shape[1]
        allowed = np.tril(np.ones((S, S), dtype=bool))  # [query i, key j]: j <= i
        scores = np.where(allowed, scores, -np.inf)
    return np.einsum("bhqs,bshk->bqhk", softmax(scores, -1), v)


def rope_side_by_side(x, theta):
    """Rotary positions on x [B,S,h,d] whose rotary pairs are stored side by side (dims 2i,
    2i+1 = pair i, frequency theta^(-2i/d)); the npz contract's order."""
    S, d = x.shape[1], x.shape[-1]
    angle = np.arange(S)[:, None] * theta ** (-2.0 * np.arange(d // 2) / d)  # [S, d/2]
    cos, sin = np.cos(angle)[None, :, None, :], np.sin(angle)[None, :, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = odd * cos + even * sin
    return out


def rope_rotate_half(x, theta):
    """Rotary positions as Hugging Face applies them: x·cos + rotate_half(x)·sin, dim i paired
    with i + d/2."""
    S, d = x.shape[1], x.shape[-1]
    angle = np.arange(S)[:, None] * theta ** (-2.0 * np.arange(d // 2) / d)
    emb = np.concatenate([angle, angle], -1)  # [S, d]
    cos, sin = np.cos(emb)[None, :, None, :], np.sin(emb)[None, :, None, :]
    half = np.concatenate([-x[..., d // 2:], x[..., :d // 2]], -1)
    return x * cos + half * sin


def ffn(h, kind, w1, w2, w3=None, b1=0.0, b2=0.0, b3=0.0):
    """The FFN: gelu (tanh), swiglu (w1 gate, w3 up) or squared_relu; w1/w3 [D,F], w2 [F,D]."""
    if kind == "swiglu":
        u = silu(h @ w1 + b1) * (h @ w3 + b3)
    elif kind == "squared_relu":
        u = np.maximum(h @ w1 + b1, 0.0) ** 2
    else:
        u = gelu(h @ w1 + b1)
    return u @ w2 + b2


def route(t, router, top_k, renormalize):
    """Softmax over all experts, the top k (ties to the lower index), renormalised or not."""
    probs = softmax(t @ router, -1)  # [T,E]
    chosen = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]
    weights = np.take_along_axis(probs, chosen, axis=-1)  # [T,k]
    if renormalize:
        weights = weights / weights.sum(-1, keepdims=True)
    return chosen, weights


def moe_ffn(h, expert, router, top_k, renormalize, n_experts):
    """Top-k MoE, explicit loop over experts (gather, compute, scatter-add), no capacity limit.
    `expert(e, x)` is expert e's FFN."""
    shape = h.shape
    t = h.reshape(-1, shape[-1])  # [T,D]
    chosen, weights = route(t, router, top_k, renormalize)
    out = np.zeros_like(t)
    for e in range(n_experts):
        tok, slot = np.nonzero(chosen == e)
        if tok.size:
            np.add.at(out, tok, weights[tok, slot][:, None] * expert(e, t[tok]))
    return out.reshape(shape)


def _renormalize(cfg):
    flag = cfg.get("normalize_top_k")
    return int(cfg["top_k"]) > 1 if flag is None else bool(flag)


def forward(params, x, cfg):
    """Recompute the model output [B,S,D] in float64 from the npz contract's parameters."""
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    eps = float(cfg["ln_eps"])
    kind = cfg.get("ffn", "gelu")

    def norm(h, name):
        if cfg.get("norm", "layernorm") == "rmsnorm":
            return rms_norm(h, p[name + ".scale"], eps)
        return layer_norm(h, p[name + ".scale"], p[name + ".bias"], eps)

    def get(name, default=0.0):
        return p.get(name, default)

    if int(cfg.get("vocab", 0) or 0):
        x = p["embed.table"][np.asarray(x, dtype=np.int64)]
    x = np.asarray(x, dtype=np.float64)
    if cfg.get("position") == "learned":
        x = x + p["positions.table"][: x.shape[1]]
    for i in range(int(cfg["n_layers"])):
        L = f"layers.{i}."
        h = norm(x, L + "ln1")
        q, k, v = (np.einsum("bsD,Dhk->bshk", h, p[L + f"attn.w{n}"]) + get(L + f"attn.b{n}")
                   for n in "qkv")
        if cfg.get("qk_norm"):
            q = rms_norm(q, p[L + "attn.q_norm.scale"], eps)
            k = rms_norm(k, p[L + "attn.k_norm.scale"], eps)
        if cfg.get("position") == "rope":
            q, k = (rope_side_by_side(t, float(cfg["rope_theta"])) for t in (q, k))
        o = causal_attention(q, k, v, bool(cfg["causal"]))
        x = x + np.einsum("bshk,hkD->bsD", o, p[L + "attn.wo"]) + get(L + "attn.bo")
        h = norm(x, L + "ln2")
        if L + "moe.router" in p:
            M = L + "moe."

            def expert(e, t, M=M):
                return ffn(t, kind, p[M + "w1"][e], p[M + "w2"][e],
                           p[M + "w3"][e] if M + "w3" in p else None,
                           *(get(M + b)[e] if M + b in p else 0.0 for b in ("b1", "b2", "b3")))
            y = moe_ffn(h, expert, p[M + "router"], int(cfg["top_k"]), _renormalize(cfg),
                        int(cfg["n_experts"]))
            if M + "shared.w1" in p:
                S_ = M + "shared."
                y = y + ffn(h, kind, p[S_ + "w1"], p[S_ + "w2"], get(S_ + "w3", None),
                            get(S_ + "b1"), get(S_ + "b2"), get(S_ + "b3"))
            x = x + y
        else:
            x = x + ffn(h, kind, p[L + "mlp.w1"], p[L + "mlp.w2"], get(L + "mlp.w3", None),
                        get(L + "mlp.b1"), get(L + "mlp.b2"), get(L + "mlp.b3"))
    return norm(x, "final_ln")


def hf_forward(tensors, config, tokens):
    """The final hidden states (`last_hidden_state`) of a Hugging Face checkpoint, in float64,
    from its tensors by `transformers`' names and conventions (torch Linear weights [out, in],
    rotate_half RoPE, GPT-2's Conv1D [in, out] with q|k|v side by side)."""
    t = {}
    for name, value in tensors.items():
        for prefix in ("model.", "transformer."):
            name = name.removeprefix(prefix)
        t[name] = np.asarray(value, dtype=np.float64)
    tokens = np.asarray(tokens, dtype=np.int64)
    if config["model_type"] == "gpt2":
        return _hf_gpt2(t, config, tokens)
    return _hf_llama(t, config, tokens)


def _hf_llama(t, c, tokens):
    H, D = c["num_attention_heads"], c["hidden_size"]
    G, d = c.get("num_key_value_heads") or H, c.get("head_dim") or D // H
    eps, theta = c.get("rms_norm_eps", 1e-6), c.get("rope_theta", 10000.0)
    qwen3 = c["model_type"] in ("qwen3", "qwen3_moe")
    x = t["embed_tokens.weight"][tokens]
    B, S = tokens.shape

    def lin(h, name):
        out = h @ t[name + ".weight"].T
        return out + t[name + ".bias"] if name + ".bias" in t else out

    for i in range(c["num_hidden_layers"]):
        L = f"layers.{i}."
        h = rms_norm(x, t[L + "input_layernorm.weight"], eps)
        q = lin(h, L + "self_attn.q_proj").reshape(B, S, H, d)
        k = lin(h, L + "self_attn.k_proj").reshape(B, S, G, d)
        v = lin(h, L + "self_attn.v_proj").reshape(B, S, G, d)
        if qwen3:
            q = rms_norm(q, t[L + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, t[L + "self_attn.k_norm.weight"], eps)
        q, k = rope_rotate_half(q, theta), rope_rotate_half(k, theta)
        o = causal_attention(q, k, v).reshape(B, S, H * d)
        x = x + lin(o, L + "self_attn.o_proj")
        h = rms_norm(x, t[L + "post_attention_layernorm.weight"], eps)
        x = x + _hf_ffn(t, c, L, h, lin)
    return rms_norm(x, t["norm.weight"], eps)


def _hf_ffn(t, c, L, h, lin):
    if c["model_type"] == "mixtral":
        M = L + "block_sparse_moe."
        names, renorm, E = ("w1", "w3", "w2"), True, c["num_local_experts"]
    elif c["model_type"] == "qwen3_moe" and int(L.split(".")[1]) not in c.get("mlp_only_layers", []):
        M = L + "mlp."
        names, renorm, E = ("gate_proj", "up_proj", "down_proj"), c.get("norm_topk_prob"), \
            c["num_experts"]
    else:
        M = L + "mlp."
        return lin(silu(lin(h, M + "gate_proj")) * lin(h, M + "up_proj"), M + "down_proj")

    def expert(e, x):
        g, u, dn = (t[f"{M}experts.{e}.{n}.weight"] for n in names)
        return (silu(x @ g.T) * (x @ u.T)) @ dn.T

    return moe_ffn(h, expert, t[M + "gate.weight"].T, c["num_experts_per_tok"], bool(renorm), E)


def _hf_gpt2(t, c, tokens):
    D, H = c["n_embd"], c["n_head"]
    eps = c.get("layer_norm_epsilon", 1e-5)
    B, S = tokens.shape
    x = t["wte.weight"][tokens] + t["wpe.weight"][:S]
    for i in range(c["n_layer"]):
        L = f"h.{i}."
        h = layer_norm(x, t[L + "ln_1.weight"], t[L + "ln_1.bias"], eps)
        qkv = h @ t[L + "attn.c_attn.weight"] + t[L + "attn.c_attn.bias"]
        q, k, v = (qkv[..., j * D:(j + 1) * D].reshape(B, S, H, D // H) for j in range(3))
        o = causal_attention(q, k, v).reshape(B, S, D)
        x = x + o @ t[L + "attn.c_proj.weight"] + t[L + "attn.c_proj.bias"]
        h = layer_norm(x, t[L + "ln_2.weight"], t[L + "ln_2.bias"], eps)
        u = gelu(h @ t[L + "mlp.c_fc.weight"] + t[L + "mlp.c_fc.bias"])
        x = x + u @ t[L + "mlp.c_proj.weight"] + t[L + "mlp.c_proj.bias"]
    return layer_norm(x, t["ln_f.weight"], t["ln_f.bias"], eps)


def relative_error(ref, out):
    """max|ref - out| / max|ref| (float64)."""
    ref = np.asarray(ref, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    return float(np.max(np.abs(ref - out)) / np.max(np.abs(ref)))


def frobenius_relative_error(ref, out):
    ref = np.asarray(ref, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    return float(np.linalg.norm(ref - out) / np.linalg.norm(ref))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", help=".npz file with params, input, output, config_json")
    ap.add_argument("--rtol", type=float, default=1e-4, help="max-abs relative error tolerance")
    args = ap.parse_args(argv)
    params, x, out, cfg = load_npz(args.path)
    ref = forward(params, x, cfg)
    if ref.shape != out.shape:
        print(f"shape mismatch: reference {ref.shape} vs output {out.shape}")
        return 1
    err = relative_error(ref, out)
    fro = frobenius_relative_error(ref, out)
    print(f"max-abs relative error: {err:.3e}")
    print(f"frobenius relative error: {fro:.3e}")
    ok = bool(np.isfinite(err)) and err <= args.rtol
    print(("PASS" if ok else "FAIL") + f": max-abs relative error {err:.3e} "
          + ("<=" if ok else "exceeds") + f" rtol {args.rtol:g}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
