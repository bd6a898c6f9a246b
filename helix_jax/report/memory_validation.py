"""The GPU memory estimate (analysis/costmodel/memory.py) held against published figures: the
formulas it follows (Korthikanti et al.'s per-layer activations as Megatron-LM implements them,
Megatron-LM's bytes per parameter) and measured peak memory per GPU (torchtitan's Llama 3.1
runs on H100). experiments/validate_memory.py writes the result."""

from __future__ import annotations

import statistics

from helix_jax.analysis.costmodel.memory import (
    Split,
    fsdp_state_bytes,
    layer_activation_bytes,
    logits_bytes,
    model_state_bytes,
    stage_activation_bytes,
)
from helix_jax.config import ModelConfig, resolve_model
from helix_jax.counts import param_counts

GIB = 2**30
MEGATRON_THEORY = ("NVIDIA/Megatron-LM megatron/training/theoretical_memory_usage.py "
                   "(d98e8a6; \"formula in Table 2 of arXiv 2205.05198\")")
MEGATRON_DISTOPT = ("NVIDIA/Megatron-LM docs/user-guide/features/dist_optimizer.md (d98e8a6); "
                    "https://docs.nvidia.com/megatron-core/developer-guide/latest/"
                    "distrib_optimizer.html")
TORCHTITAN = ("pytorch/torchtitan benchmarks/llama3_h100_202412_torchtitan.md (820504e): "
              "peak reserved GiB per GPU (torchtitan/components/metrics.py), H100 96 GB")
FORMULA_TOLERANCE = 1e-9  # the formula rows must agree exactly
MEASURED_TOLERANCE = 0.30  # |error| the measured rows stay within (see the results' notes)

# GPT shapes of Korthikanti et al. (experiments/models/korthikanti-*.toml): GELU FFN of 4h.
GPT3_175B = ModelConfig("gpt3-175b", n_layers=96, n_heads=96, head_dim=128, d_model=12288,
                        d_ff=4 * 12288, vocab=51200, seq=2048, batch=1, dtype="float16")
GPT_22B = ModelConfig("gpt-22b", n_layers=48, n_heads=64, head_dim=96, d_model=6144,
                      d_ff=4 * 6144, vocab=51200, seq=2048, batch=1, dtype="float16")


def megatron_layer_bytes(cfg: ModelConfig, micro: int, tp: int, sp: bool) -> float:
    """Megatron-LM's per-layer activation bytes (theoretical_memory_usage.py): with sequence
    parallelism sbh(18 + 4 f/h) / t, without it sbh(10 + 24 / t) (selective recompute)."""
    sbh = cfg.seq * micro * cfg.d_model
    return sbh * (18 + 4 * cfg.d_ff / cfg.d_model) / tp if sp else sbh * (10 + 24 / tp)


def formula_rows() -> list[dict]:
    """The estimate against the published formulas it follows: per-layer activations with
    Korthikanti et al.'s dropout masks and selective recompute, and bytes per parameter."""
    rows = []
    for cfg in (GPT3_175B, GPT_22B):
        for sp in (True, False):
            split = Split(tokens=cfg.seq, hidden=8 if sp else 1, heads=8, mlp=8, vocab=8,
                          keys=cfg.seq)
            ours = layer_activation_bytes(cfg, split, "selective", flash=False, dropout=True)
            rows.append(dict(label=f"{cfg.name} layer, TP 8{', SP' if sp else ''}, selective, "
                                   f"b 1, s {cfg.seq}", source=MEGATRON_THEORY, unit="MB",
                             published=megatron_layer_bytes(cfg, 1, 8, sp) / 1e6,
                             estimate=ours / 1e6))
    for elem, name, plain, dist in ((2, "bf16 params, fp32 grads", 18, lambda d: 6 + 12 / d),
                                    (4, "fp32 params, fp32 grads", 16, lambda d: 8 + 8 / d)):
        for d in (1, 8, 64):
            published = plain if d == 1 else dist(d)
            what = "not distributed" if d == 1 else f"distributed, d = {d}"
            rows.append(dict(label=f"bytes / parameter, {name}, {what}", source=MEGATRON_DISTOPT,
                             unit="B", published=published, estimate=model_state_bytes(1, elem, d)))
    return [_with_error(r) for r in rows]


# torchtitan's full-activation-checkpointing rows; selective op AC (its Tables 1, 3) is no policy
# here, and its pipelined rows (Tables 5, 6) do not state the microbatch size.
TORCHTITAN_ROWS = [
    dict(table="Table 2", model="llama3-8b", fsdp=8, cp=1, tp=1, batch=1, seq=32768, gib=83.9),
    dict(table="Table 2", model="llama3-8b", fsdp=4, cp=2, tp=1, batch=1, seq=65536, gib=84.2),
    dict(table="Table 2", model="llama3-8b", fsdp=2, cp=4, tp=1, batch=1, seq=131072, gib=84.0),
    dict(table="Table 2", model="llama3-8b", fsdp=1, cp=8, tp=1, batch=1, seq=262144, gib=84.5),
    dict(table="Table 4, 2D", model="llama3-70b", fsdp=32, cp=1, tp=8, batch=16, seq=8192,
         gib=71.9),
    dict(table="Table 4, 2D + AsyncTP", model="llama3-70b", fsdp=32, cp=1, tp=8, batch=16,
         seq=8192, gib=67.6),
]


def torchtitan_estimate(row: dict) -> dict:
    """The estimate of one torchtitan run, by part: FSDP over fsdp x cp ranks (torchtitan's FSDP
    mesh includes cp: torchtitan/distributed/parallel_dims.py) of each tensor rank's parameters,
    full recompute, tensor parallelism with sequence parallelism and a vocabulary-parallel loss,
    `batch` sequences of `seq` positions per data rank split over cp."""
    cfg = resolve_model(row["model"], seq=row["seq"], batch=row["batch"])
    tp, cp = row["tp"], row["cp"]
    total = param_counts(cfg)[0]
    layer = (total - 2 * cfg.vocab * cfg.d_model) / cfg.n_layers
    states = fsdp_state_bytes(total / tp / (row["fsdp"] * cp), layer / tp, 2)
    split = Split(tokens=row["batch"] * row["seq"] / cp, hidden=tp, heads=tp, mlp=tp, vocab=tp,
                  keys=row["seq"])
    act = stage_activation_bytes(cfg, split, "full", cfg.n_layers)
    logits = logits_bytes(cfg, split)
    return {"states": states, "activations": act, "logits": logits,
            "total": states + act + logits}


def measured_rows() -> list[dict]:
    """The estimate against torchtitan's measured peak memory per GPU."""
    rows = []
    for r in TORCHTITAN_ROWS:
        est = torchtitan_estimate(r)
        parallel = f"FSDP {r['fsdp']}" + (f", CP {r['cp']}" if r["cp"] > 1 else "") + (
            f", TP {r['tp']}" if r["tp"] > 1 else "")
        rows.append(_with_error(dict(
            label=f"{r['model']} {r['table']}: {parallel}, local batch {r['batch']} x "
                  f"{r['seq']}, full AC", source=TORCHTITAN, unit="GiB", published=r["gib"],
            estimate=est["total"] / GIB, parts_gib={k: v / GIB for k, v in est.items()})))
    return rows


def _with_error(row: dict) -> dict:
    return {**row, "error": row["estimate"] / row["published"] - 1}


def summary(rows: list[dict]) -> dict:
    """Median and worst |error| of `rows`."""
    errors = [abs(r["error"]) for r in rows]
    return {"rows": len(rows), "median_abs_error": statistics.median(errors),
            "worst_abs_error": max(errors)}
