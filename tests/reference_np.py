"""Independent float64 NumPy oracle for the helix_jax ``.npz`` forward-pass contract.

This module deliberately imports neither jax nor helix_jax. It reads an ``.npz``
file holding a transformer's parameters, an ``input`` [B,S,D], the library's
``output`` [B,S,D] and a ``config_json`` string, and recomputes the output in
float64 with plain NumPy so the library's result can be checked against it.

Architecture (pre-norm): for each layer ``x = x + Attn(LN1(x)); x = x + FFN(LN2(x))``,
then a final LayerNorm. FFN is a dense tanh-GELU MLP, or (``n_experts > 0``) a
top-k mixture of experts written as an explicit per-expert loop, no capacity limit.

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


def gelu(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def softmax(x, axis=-1):
    z = np.exp(x - x.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def attention(h, wq, wk, wv, wo, causal):
    """h [B,S,D]; wq/wk/wv [D,H,d]; wo [H,d,D] -> [B,S,D]."""
    q = np.einsum("bsD,Dhk->bshk", h, wq)
    k = np.einsum("bsD,Dhk->bshk", h, wk)
    v = np.einsum("bsD,Dhk->bshk", h, wv)
    scores = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
    if causal:
        S = h.shape[1]
        allowed = np.tril(np.ones((S, S), dtype=bool))  # [query i, key j]: j <= i
        scores = np.where(allowed, scores, -np.inf)
    o = np.einsum("bhqs,bshk->bqhk", softmax(scores, -1), v)
    return np.einsum("bshk,hkD->bsD", o, wo)


def dense_ffn(h, w1, b1, w2, b2):
    return gelu(h @ w1 + b1) @ w2 + b2


def moe_ffn(h, router, w1, b1, w2, b2, top_k, normalize_top_k):
    """Top-k MoE, explicit loop over experts (gather, compute, scatter-add)."""
    shape = h.shape
    t = h.reshape(-1, shape[-1])  # [T,D]
    probs = softmax(t @ router, -1)  # [T,E]
    chosen = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]  # ties -> lower index
    weights = np.take_along_axis(probs, chosen, axis=-1)  # [T,k]
    if top_k > 1 or normalize_top_k:
        weights = weights / weights.sum(-1, keepdims=True)
    out = np.zeros_like(t)
    for e in range(router.shape[-1]):
        tok, slot = np.nonzero(chosen == e)
        if tok.size == 0:
            continue
        y = gelu(t[tok] @ w1[e] + b1[e]) @ w2[e] + b2[e]
        np.add.at(out, tok, weights[tok, slot][:, None] * y)
    return out.reshape(shape)


def forward(params, x, cfg):
    """Recompute the model output [B,S,D] in float64."""
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    x = np.asarray(x, dtype=np.float64)
    eps = float(cfg["ln_eps"])
    n_experts = int(cfg.get("n_experts", 0) or 0)
    for i in range(int(cfg["n_layers"])):
        L = f"layers.{i}."
        h = layer_norm(x, p[L + "ln1.scale"], p[L + "ln1.bias"], eps)
        x = x + attention(h, p[L + "attn.wq"], p[L + "attn.wk"], p[L + "attn.wv"],
                          p[L + "attn.wo"], bool(cfg["causal"]))
        h = layer_norm(x, p[L + "ln2.scale"], p[L + "ln2.bias"], eps)
        if n_experts > 0:
            x = x + moe_ffn(h, p[L + "moe.router"], p[L + "moe.w1"], p[L + "moe.b1"],
                            p[L + "moe.w2"], p[L + "moe.b2"], int(cfg["top_k"]),
                            bool(cfg["normalize_top_k"]))
        else:
            x = x + dense_ffn(h, p[L + "mlp.w1"], p[L + "mlp.b1"], p[L + "mlp.w2"], p[L + "mlp.b2"])
    return layer_norm(x, p["final_ln.scale"], p["final_ln.bias"], eps)


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
