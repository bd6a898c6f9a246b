"""The paper's claimed numbers, as data, and the arithmetic that checks them against physics.

Everything the report says about where the paper's figures cannot hold is computed here from the
claims, the model shapes (`helix_jax.config`), the model FLOPs (`analysis.formulas`) and a hardware
profile; optionally also from projections of the compiled programs (`analysis.project`). No verdict
is typed by hand: each verdict, and each word of a statement that judges (beats or loses to, below or
above, cannot or can), is chosen by comparing the numbers the statement carries.

Sources: the paper's experiment sections.
  dense table  "Detailed Experiments" (Results Table) and "Helix: Two-Level Attention Partitioning -
               Experimental Details" (Results Summary)
  MoE table    "Detailed Experimental Setup and Results" (results, per-layer timeline, memory and
               tokens per expert)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from helix_jax.analysis.costmodel.hardware import Hardware
from helix_jax.config import ModelConfig, resolve_model
from helix_jax.report.fmt import num, pct
from helix_jax.report.ranking import fastest_that_fits, full_projection
from helix_jax.report.wording import beats, compare
from helix_jax.units import gb

DENSE_SOURCES = ("the paper, dense experiments: Results Table",
                 "the paper, Helix experimental details: Results Summary")
MOE_SOURCES = ("the paper, MoE experimental setup and results",)
# (table, the paper's baseline, the paper's method): the comparisons the paper's tables make
PAIRS = (("dense", "tp-pp", "helix"), ("moe", "tp-pp", "ep"))

TPOT_DEFINITION = "Average synchronization and communication overhead per token (milliseconds)"

# H100 SXM datasheet HBM3 bandwidth: the most generous rate for a lower bound on reading memory.
H100_HBM_PEAK_BYTES_PER_S = 3.35e12
DEVICES = 16  # the paper's 4 nodes x 4 H100
TRAINING_FLOPS_FACTOR = 3  # forward + backward ~ 3x the forward matmul FLOPs
WHOLE_STEP_SHARE = 0.9  # a TPOT this share of step / seq or more is the whole step per position


@dataclass(frozen=True)
class Claim:
    """One row of one of the paper's tables."""

    table: str  # "dense" or "moe"
    model: str  # our preset with the paper's shapes
    layout: str  # our layout spec for the paper's configuration
    method: str  # the paper's wording
    tokens_per_s: float
    tpot_ms: float
    sources: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.table} {self.method}"


CLAIMS: tuple[Claim, ...] = (
    Claim("dense", "paper-dense", "tp-pp", "Baseline (TP=8, PP=2)", 1_200_000, 0.35, DENSE_SOURCES),
    Claim("dense", "paper-dense", "helix", "Proposed (m x n = 16, m=4, n=4)", 1_580_000, 0.22,
          DENSE_SOURCES),
    Claim("moe", "paper-moe", "tp-pp", "Baseline (TP=8, PP=2)", 120_000, 8.3, MOE_SOURCES),
    Claim("moe", "paper-moe", "ep", "Proposed (EP=16)", 450_000, 2.2, MOE_SOURCES),
)

# The MoE experiment section's own breakdown of the EP=16 run and its memory figures.
MOE_REPORT = {
    "tokens_per_expert": 640_000,  # "Batching: 640,000 tokens per expert per batch"
    "dispatch_ms_per_layer": 26.2,  # "Token distribution: 26.2 ms (NVLink)"
    "expert_compute_ms": 5.0,  # "Expert computation: 5.0 ms per expert"
    "combine_ms_per_layer": 26.2,  # "Result aggregation: 26.2 ms (NVLink)"
    "hidden_fraction": 0.80,  # "Overlap efficiency: 80% communication hidden"
    "ep_memory_bytes": 668e6,  # "Memory usage: ~668 MB per GPU (1 expert + shared buffers)"
    "nvlink_bidirectional_bytes_per_s": 400e9,  # "NVLink bandwidth: 400 GB/s bidirectional"
    "source": MOE_SOURCES[0],
}


def claim(table: str, layout: str) -> Claim | None:
    """The paper's claim for this table and layout spec, if it made one."""
    return next((c for c in CLAIMS if c.table == table and c.layout == layout), None)


def claims_as_dicts() -> list[dict]:
    return [dataclasses.asdict(c) for c in CLAIMS]


# ----------------------------------------------------------------------------- physical limits

def limits(cfg: ModelConfig, hw: Hardware, devices: int = DEVICES) -> dict[str, float]:
    """Physical limits of `cfg` on `devices` GPUs of `hw`: FLOPs per token, peak tokens/s, decode
    bound (docs/cost-model.md, "Physical limits").

    `flops_per_token` is the forward pass with non-causal attention (the usual convention);
    `flops_per_token_causal` halves the attention term (the fewest FLOPs: the most generous bound).
    The decode bound: one decode step (one new token for each of the B sequences) must read the
    whole KV cache, 2·L·B·S·H·d elements, from HBM at no more than the datasheet rate.
    """
    from helix_jax.analysis.costmodel.formulas import DTYPE_BYTES, forward_flops_per_token

    f_full = forward_flops_per_token(cfg.replace(causal=False))
    f_causal = forward_flops_per_token(cfg.replace(causal=True))
    peak = devices * hw.peak_flops_per_s
    kv_bytes = (2 * cfg.n_layers * cfg.batch * cfg.seq * cfg.n_heads * cfg.head_dim
                * DTYPE_BYTES[cfg.dtype])
    decode_s = kv_bytes / (devices * H100_HBM_PEAK_BYTES_PER_S)
    return {
        "model": cfg.name,
        "devices": devices,
        "tokens_per_step": cfg.batch * cfg.seq,
        "flops_per_token": f_full,
        "flops_per_token_causal": f_causal,
        "peak_flops_per_s": peak,
        "peak_tokens_per_s": peak / f_full,
        "peak_tokens_per_s_causal": peak / f_causal,
        "kv_cache_bytes": kv_bytes,
        "hbm_bytes_per_s": H100_HBM_PEAK_BYTES_PER_S,
        "decode_step_min_s": decode_s,
        "decode_tokens_per_s_max": cfg.batch / decode_s,
    }


def check_claim(c: Claim, hw: Hardware) -> dict[str, float]:
    """What a claim implies: its step time, its share of peak, and TPOT against step time."""
    cfg = resolve_model(c.model)
    lim = limits(cfg, hw)
    tokens = lim["tokens_per_step"]
    step = tokens / c.tokens_per_s
    per_position_ms = step / cfg.seq * 1e3
    return {
        "tokens_per_s": c.tokens_per_s,
        "tpot_ms": c.tpot_ms,
        "implied_step_s": step,
        "implied_step_per_position_ms": per_position_ms,
        "fraction_of_peak": c.tokens_per_s / lim["peak_tokens_per_s"],
        "fraction_of_peak_causal": c.tokens_per_s / lim["peak_tokens_per_s_causal"],
        "achieved_flops_per_s": c.tokens_per_s * lim["flops_per_token"],
        "training_fraction_of_peak_causal": (TRAINING_FLOPS_FACTOR * c.tokens_per_s
                                             * lim["flops_per_token_causal"]
                                             / lim["peak_flops_per_s"]),
        "tpot_over_step_per_position": c.tpot_ms / per_position_ms,
        "tpot_literal_overhead_s_per_step": c.tpot_ms * 1e-3 * tokens,
        "decode_step_min_ms": lim["decode_step_min_s"] * 1e3,
        "decode_bound_over_tpot": lim["decode_step_min_s"] * 1e3 / c.tpot_ms,
        "tokens_per_s_over_decode_max": c.tokens_per_s / lim["decode_tokens_per_s_max"],
    }


# ----------------------------------------------------------------------------- statements

def _statement(sid: str, verdict: str, title: str, text: str, **numbers: Any) -> dict:
    """A computed statement; `tables` says which of the paper's tables it is about."""
    tables = ["moe"] if sid.startswith("moe") or "-moe" in sid else (
        ["dense"] if "-dense" in sid else ["dense", "moe"])
    return {"id": sid, "tables": tables, "verdict": verdict, "title": title, "text": text,
            "numbers": numbers}


def _possible(fraction_of_peak: float) -> str:
    """'possible' at or under the peak, else 'more than the GPUs have': a share of peak, judged."""
    return "possible" if fraction_of_peak <= 1 else "more than the GPUs have"


def _times(ratio: float, over: str, under: str) -> str:
    """'35.8x below' for a ratio over 1, '2.0x above' (its inverse) under 1: a factor, worded."""
    return f"{ratio:.1f}x {over}" if ratio >= 1 else f"{1 / ratio:.1f}x {under}"


class _Context:
    """What every claim statement needs: the paper's models, their limits and each claim checked."""

    def __init__(self, hw: Hardware):
        self.hw = hw
        self.dense, self.moe = resolve_model("paper-dense"), resolve_model("paper-moe")
        self.lims = {"dense": limits(self.dense, hw), "moe": limits(self.moe, hw)}
        self.checks = {(c.table, c.layout): check_claim(c, hw) for c in CLAIMS}


def _peak_statements(ctx: _Context) -> list[dict]:
    """Each claim's share of the 16-GPU peak, as a forward pass and as a training step."""
    out, hw, lims, checks = [], ctx.hw, ctx.lims, ctx.checks
    for c in CLAIMS:
        k, lim = checks[(c.table, c.layout)], lims[c.table]
        forward, training = k["fraction_of_peak"], k["training_fraction_of_peak_causal"]
        verdict = ("cannot hold" if forward > 1 else "cannot hold as training" if training > 1
                   else "possible as forward or training throughput")
        text = (f"{c.label} claims {num(c.tokens_per_s)} tokens/s. At {num(lim['flops_per_token'] / 1e9)}"
                f" GFLOP per token (forward, non-causal) that is {num(k['achieved_flops_per_s'] / 1e15)}"
                f" PFLOP/s, {pct(forward)} of the {lim['devices']} x "
                f"{num(hw.peak_flops_per_s / 1e12)} TFLOP/s peak ({num(lim['peak_tokens_per_s'])} "
                f"tokens/s at most). As a forward pass that is {_possible(forward)}; a training "
                f"step (about {TRAINING_FLOPS_FACTOR}x the forward FLOPs, even with causal "
                f"attention at {num(lim['flops_per_token_causal'] / 1e9)} GFLOP/token) would need "
                f"{pct(training)} of peak: {_possible(training)}.")
        out.append(_statement(f"peak-{c.table}-{c.layout}", verdict,
                              f"{c.label}: share of the 16-GPU peak", text,
                              claimed_tokens_per_s=c.tokens_per_s,
                              flops_per_token=lim["flops_per_token"],
                              peak_tokens_per_s=lim["peak_tokens_per_s"],
                              fraction_of_peak=k["fraction_of_peak"],
                              training_fraction_of_peak_causal=training))

    return out


def _decode_statements(ctx: _Context) -> list[dict]:
    """TPOT read as decode latency against the KV-cache read bound."""
    out, lims, checks = [], ctx.lims, ctx.checks
    for table, cfg in (("dense", ctx.dense), ("moe", ctx.moe)):
        lim = lims[table]
        rows = [c for c in CLAIMS if c.table == table]
        ratios = [checks[(c.table, c.layout)]["decode_bound_over_tpot"] for c in rows]
        tps_ratio = max(checks[(c.table, c.layout)]["tokens_per_s_over_decode_max"] for c in rows)
        broken = sum(r > 1 for r in ratios)
        verdict = ("cannot hold as decode" if broken or tps_ratio > 1
                   else "possible as decode")
        text = (f"If TPOT meant decode latency (one new token for each of the {cfg.batch} sequences "
                f"per step, with a KV cache), every step must read the whole cache: 2 x "
                f"{cfg.n_layers} layers x {cfg.batch} x {cfg.seq} x {cfg.n_heads * cfg.head_dim} x "
                f"2 B = {gb(lim['kv_cache_bytes'])}, at least "
                f"{num(lim['decode_step_min_s'] * 1e3)} ms on {lim['devices']} GPUs at "
                f"{num(H100_HBM_PEAK_BYTES_PER_S / 1e12)} TB/s each. The claimed TPOTs ("
                + ", ".join(f"{c.tpot_ms} ms" for c in rows) + ") are "
                + ", ".join(_times(r, "below", "above") for r in ratios) + " that bound "
                f"({broken} of {len(ratios)} faster than it), and the claimed throughput would be "
                f"up to {tps_ratio:.1f}x the decode maximum of "
                f"{num(lim['decode_tokens_per_s_max'])} tokens/s.")
        out.append(_statement(f"decode-{table}", verdict, f"{table} TPOT as "
                              "decode latency", text, kv_cache_bytes=lim["kv_cache_bytes"],
                              decode_step_min_ms=lim["decode_step_min_s"] * 1e3,
                              claimed_tpot_ms=[c.tpot_ms for c in rows],
                              bound_over_claim=ratios,
                              decode_tokens_per_s_max=lim["decode_tokens_per_s_max"]))

    return out


def _tpot_reading(shares: list[float]) -> str:
    """What a table's TPOTs are, from their shares of the step per position."""
    whole = [x >= WHOLE_STEP_SHARE for x in shares]
    return ("the whole step per position" if all(whole) else
            "a part of the step (overhead, as defined)" if not any(whole) else
            "the whole step per position for some claims and a part of it for others")


def _tpot_statement(ctx: _Context) -> dict:
    """TPOT's definition against the throughput claims."""
    lims, checks, dense = ctx.lims, ctx.checks, ctx.dense
    parts, shares = [], {}
    for c in CLAIMS:
        k = checks[(c.table, c.layout)]
        shares[c.label] = k["tpot_over_step_per_position"]
        parts.append(f"{c.label}: step/seq {num(k['implied_step_per_position_ms'])} ms, TPOT "
                     f"{c.tpot_ms} ms = {pct(k['tpot_over_step_per_position'])}")
    hc, helix = claim("dense", "helix"), checks[("dense", "helix")]
    literal_fails = helix["tpot_literal_overhead_s_per_step"] > helix["implied_step_s"]
    readings = {t: _tpot_reading([shares[c.label] for c in CLAIMS if c.table == t])
                for t in ("dense", "moe")}
    differ = readings["dense"] != readings["moe"]
    text = (f"The paper defines TPOT as \"{TPOT_DEFINITION.lower()}\". Read per token of the "
            f"{num(lims['dense']['tokens_per_step'])}-token batch, the helix claim's {hc.tpot_ms} "
            f"ms gives {num(helix['tpot_literal_overhead_s_per_step'])} s of overhead per batch, "
            f"while {num(hc.tokens_per_s)} tokens/s means the whole batch takes "
            f"{num(helix['implied_step_s'])} s: that reading "
            f"{'cannot hold' if literal_fails else 'is possible'}. Per sequence position (step "
            f"time / {dense.seq}) the claims give: " + "; ".join(parts) + ". So the dense TPOTs "
            f"are {readings['dense']} while the MoE TPOTs are {readings['moe']} (taking "
            f"{pct(WHOLE_STEP_SHARE, 0)} or more as the whole step): the two tables use TPOT "
            f"{'differently' if differ else 'the same way'}. This report gives TPOT = step / seq "
            "and exposed communication / seq side by side.")
    verdict = ("inconsistent definition" if literal_fails or differ
               else "consistent definition")
    return _statement("tpot-definition", verdict, "TPOT's definition",
                      text, tpot_over_step_per_position=shares,
                      literal_overhead_s_per_step_helix=helix["tpot_literal_overhead_s_per_step"],
                      implied_step_s_helix=helix["implied_step_s"])


def _expert_compute_statement(ctx: _Context) -> dict:
    """The MoE section's expert compute time against the GPU's peak."""
    hw, moe, r = ctx.hw, ctx.moe, MOE_REPORT
    D, F = moe.d_model, moe.d_ff
    expert_flops = 4 * D * F * r["tokens_per_expert"]
    needed = expert_flops / (r["expert_compute_ms"] * 1e-3)
    over = needed / hw.peak_flops_per_s
    return _statement(
        "moe-expert-compute", "cannot hold" if over > 1 else "possible",
        f"MoE: {r['expert_compute_ms']} ms of expert compute",
        f"One expert's MLP on {num(r['tokens_per_expert'])} tokens is 4 x {D} x {F} x "
        f"{num(r['tokens_per_expert'])} = {num(expert_flops / 1e12)} TFLOP. Done in "
        f"{r['expert_compute_ms']} ms that is {num(needed / 1e15)} PFLOP/s on one GPU: "
        + (f"{over:.0f}x the" if over > 1 else f"{pct(over)} of the") + " H100's "
        + f"{num(hw.peak_flops_per_s / 1e12)} TFLOP/s peak. At peak it takes at least "
        f"{num(expert_flops / hw.peak_flops_per_s * 1e3)} ms.",
        expert_flops=expert_flops, claimed_ms=r["expert_compute_ms"], needed_flops_per_s=needed,
        over_peak=over, min_ms_at_peak=expert_flops / hw.peak_flops_per_s * 1e3)


def _dispatch_statement(ctx: _Context) -> dict:
    """The MoE section's token distribution time against its own NVLink figure."""
    hw, r, D = ctx.hw, MOE_REPORT, ctx.moe.d_model
    send = r["tokens_per_expert"] * D * 2 * (DEVICES - 1) / DEVICES
    rate = send / (r["dispatch_ms_per_layer"] * 1e-3)
    per_dir = r["nvlink_bidirectional_bytes_per_s"] / 2
    remote = DEVICES - hw.gpus_per_node
    where = (f"{remote} of the {DEVICES - 1} destinations are on other nodes, reached over "
             "InfiniBand, not NVLink" if remote > 0 else "every destination shares the node")
    return _statement(
        "moe-dispatch-time", "cannot hold" if rate > per_dir or remote > 0 else "possible",
        f"MoE: {r['dispatch_ms_per_layer']} ms token distribution over NVLink",
        f"Sending {num(r['tokens_per_expert'])} tokens x {D} x 2 B to the other {DEVICES - 1} "
        f"GPUs ({DEVICES - 1}/{DEVICES} of them leave) is {gb(send)} per GPU per layer (without "
        f"any capacity slack). In {r['dispatch_ms_per_layer']} ms that needs "
        f"{num(rate / 1e9)} GB/s per GPU per direction: {rate / per_dir:.2f}x the paper's own "
        f"NVLink figure ({num(r['nvlink_bidirectional_bytes_per_s'] / 1e9)} GB/s bidirectional = "
        f"{num(per_dir / 1e9)} GB/s per direction), and {where}.",
        bytes_per_gpu=send, claimed_ms=r["dispatch_ms_per_layer"], needed_bytes_per_s=rate,
        nvlink_per_direction=per_dir, over_nvlink=rate / per_dir, remote_destinations=remote)


def _timeline_statement(ctx: _Context) -> dict:
    """The MoE section's per-layer timeline against the step its throughput claim implies."""
    r, moe, ep = MOE_REPORT, ctx.moe, ctx.checks[("moe", "ep")]
    comm = r["dispatch_ms_per_layer"] + r["combine_ms_per_layer"]
    layer_max = comm + r["expert_compute_ms"]
    layer_min = comm * (1 - r["hidden_fraction"]) + r["expert_compute_ms"]
    per_batch = (moe.n_layers * layer_min * 1e-3, moe.n_layers * layer_max * 1e-3)
    step = ep["implied_step_s"]
    if step > per_batch[1]:
        against = (f"{step / per_batch[1]:.0f} to {step / per_batch[0]:.0f}x longer. The two "
                   "cannot describe one run.")
    elif step < per_batch[0]:
        against = (f"{per_batch[0] / step:.0f} to {per_batch[1] / step:.0f}x shorter. The two "
                   "cannot describe one run.")
    else:
        against = "within that range."
    return _statement(
        "moe-timeline", "consistent" if per_batch[0] <= step <= per_batch[1] else "inconsistent",
        "MoE: the EP=16 timeline against its throughput",
        f"The report's per-layer timeline is {r['dispatch_ms_per_layer']} + "
        f"{r['expert_compute_ms']} + {r['combine_ms_per_layer']} ms ({num(layer_min)} ms with "
        f"{pct(r['hidden_fraction'])} of communication hidden): {num(per_batch[0])} to "
        f"{num(per_batch[1])} s for {moe.n_layers} layers. The claimed "
        f"{num(claim('moe', 'ep').tokens_per_s)} tokens/s means a {num(step)} s batch: " + against,
        layer_ms=(layer_min, layer_max), batch_s=per_batch, implied_step_s=step)


def _memory_statement(ctx: _Context) -> dict:
    """The MoE section's memory per GPU against what one expert's layers alone hold."""
    r, moe = MOE_REPORT, ctx.moe
    D, F = moe.d_model, moe.d_ff
    expert_bytes = 2 * D * F * 2
    attn_bytes = 4 * D * moe.n_heads * moe.head_dim * 2
    act_bytes = r["tokens_per_expert"] * D * 2
    need = moe.n_layers * (expert_bytes + attn_bytes) + act_bytes
    claimed = r["ep_memory_bytes"]
    return _statement(
        "moe-memory", "cannot hold" if need > claimed else "possible",
        f"MoE: {claimed / 1e6:.0f} MB per GPU under EP={DEVICES}",
        f"One expert's two fp16 matrices are 2 x {D} x {F} x 2 B = {gb(expert_bytes)} for one "
        f"layer ({gb(moe.n_layers * expert_bytes)} for {moe.n_layers}); attention weights, "
        f"replicated under EP, add {gb(moe.n_layers * attn_bytes)}; one [{num(r['tokens_per_expert'])}"
        f", {D}] fp16 activation is {gb(act_bytes)}. That is at least {gb(need)} per GPU, "
        + (f"{need / claimed:.0f}x the" if need > claimed else f"{pct(need / claimed)} of the")
        + f" claimed {claimed / 1e6:.0f} MB.",
        expert_bytes_per_layer=expert_bytes, attention_bytes=moe.n_layers * attn_bytes,
        activation_bytes=act_bytes, min_bytes=need, claimed_bytes=claimed)


def _moe_report_statements(ctx: _Context) -> list[dict]:
    """The MoE section's own EP=16 breakdown: compute, dispatch, timeline and memory."""
    return [_expert_compute_statement(ctx), _dispatch_statement(ctx), _timeline_statement(ctx),
            _memory_statement(ctx)]


def claim_statements(hw: Hardware) -> list[dict]:
    """Statements from the claims and the model shapes alone (no compiled program needed)."""
    ctx = _Context(hw)
    return (_peak_statements(ctx) + _decode_statements(ctx) + [_tpot_statement(ctx)]
            + _moe_report_statements(ctx))


def _against_projection(c: Claim, p: dict, k: dict, hw: Hardware) -> dict:
    """One claim against the projection of its layout's compiled program."""
    pr = p["projected"]
    claimed = k["implied_step_s"]
    room = claimed - pr["compute_seconds"]
    ratio = c.tokens_per_s / pr["tokens_per_s"]
    comm = pr["exposed_comm_seconds"]
    bytes_ = p["comm_bytes_per_device"]
    if room <= 0:
        verdict = "cannot hold"
        need = "less time than the compute alone takes at the profile's achieved rate"
    elif comm <= room:
        verdict = "possible: slower than the projection"
        need = (f"nothing the hardware lacks: the claim is slower than the projected program, "
                f"so physics does not rule it out, though its implementation would have run "
                f"at {pct(ratio)} of the projected speed")
    else:
        hide = 1 - room / comm
        verdict = ("within 25% of the projection" if c.tokens_per_s <= 1.25 * pr["tokens_per_s"]
                   else "needs overlap the paper does not describe")
        need = (f"{pct(hide)} of the {num(comm)} s of exposed communication hidden behind "
                f"compute, or links {comm / room:.1f}x faster")
    top = max(p["collectives"], key=lambda r: r["seconds"], default=None)
    largest = "" if top is None else (
        f" The largest collective is the {top['op']} over groups of {top['group_size']} "
        f"({'InfiniBand' if top['link'] == 'ib' else 'NVLink'}): "
        f"{gb(top['payload_bytes_per_device'] * top['count'])} in {top['count']} executions, "
        f"{num(top['seconds'])} s.")
    text = (f"{c.label}: claimed {num(c.tokens_per_s)} tokens/s = a {num(claimed)} s step for "
            f"{num(p['tokens_per_step'])} tokens. The compiled {p['layout']} program "
            f"(batch_chunks={p['batch_chunks']}) priced on {hw.name} takes {num(pr['step_seconds'])} "
            f"s: {num(pr['compute_seconds'])} s compute + {num(comm)} s exposed communication "
            f"({gb(bytes_['nvlink'])} NVLink + {gb(bytes_['ib'])} InfiniBand per device) = "
            f"{num(pr['tokens_per_s'])} forward tokens/s; the claim is {ratio:.2f}x the "
            f"projection. Matching it needs {need}.{largest}")
    return _statement(f"projection-{c.table}-{c.layout}", verdict,
                      f"{c.label} against the projection", text,
                      claimed_tokens_per_s=c.tokens_per_s,
                      projected_tokens_per_s=pr["tokens_per_s"], claim_over_projection=ratio,
                      claimed_step_s=claimed, projected_step_s=pr["step_seconds"],
                      compute_s=pr["compute_seconds"], exposed_comm_s=comm,
                      nvlink_bytes=bytes_["nvlink"], ib_bytes=bytes_["ib"])


def _ranking_statement(table: str, base: str, new: str,
                       projections: dict[tuple[str, str], dict]) -> dict:
    """The paper's method against its baseline: the claimed order beside the projected one."""
    pb, pn = projections[(table, base)], projections[(table, new)]
    cb, cn = claim(table, base), claim(table, new)
    tb, tn = pb["projected"]["tokens_per_s"], pn["projected"]["tokens_per_s"]
    claimed, projected = cn.tokens_per_s / cb.tokens_per_s, tn / tb
    found = fastest_that_fits([(spec, p) for (t, spec), p in projections.items() if t == table],
                              view=lambda sp: full_projection(sp[1]))
    best_spec, best_tps = (found[0], found[1]["projected"]["tokens_per_s"]) if found else (None, None)
    holds = compare(cn.tokens_per_s, cb.tokens_per_s) == compare(tn, tb)
    best_text = (f"The fastest projected layout that fits in memory here is {best_spec} at "
                 f"{num(best_tps)} forward tokens/s." if found
                 else "No projected layout fits in memory.")
    return _statement(
        f"ranking-{table}", "ranking holds" if holds else "ranking reversed",
        f"{table}: {new} against {base}",
        f"In the paper {new} {beats(cn.tokens_per_s, cb.tokens_per_s)} {base} "
        f"({claimed:.2f}x its throughput); in the projections {new} {beats(tn, tb)} {base} "
        f"({projected:.2f}x: {num(tn)} against {num(tb)} forward tokens/s). " + best_text,
        claimed_ratio=claimed, projected_ratio=projected,
        best_layout=best_spec, best_tokens_per_s=best_tps)


def _ep_volume_statement(pe: dict, k: dict) -> dict:
    """EP=16's compiled all-to-all time against the share of the step the MoE TPOT claims."""
    moe, c = resolve_model("paper-moe"), claim("moe", "ep")
    a2a = pe["comm_bytes_by_op"].get("all-to-all", 0.0)
    a2a_s = sum(r["seconds"] for r in pe["collectives"] if r["op"] == "all-to-all")
    share, tpot_share = a2a_s / k["implied_step_s"], k["tpot_over_step_per_position"]
    consistent = share >= tpot_share
    return _statement(
        "moe-ep-volume", "consistent" if consistent else "inconsistent",
        "MoE: EP=16's all-to-all volume against its TPOT",
        f"The compiled EP=16 program's dispatch and combine all-to-alls move {gb(a2a)} per "
        f"device per forward step (capacity factor {moe.capacity_factor}, all {moe.n_layers} "
        f"layers), {num(a2a_s)} s at the profile's link rates even with none of it hidden: "
        f"{pct(share)} of the {num(k['implied_step_s'])} s step the claimed "
        f"{num(c.tokens_per_s)} tokens/s implies, while the claimed TPOT of {c.tpot_ms} ms is "
        f"{pct(tpot_share)} of that step per position. Communication "
        + ("can" if consistent else "cannot") + " be what the MoE TPOT measures.",
        all_to_all_bytes=a2a, all_to_all_s=a2a_s, implied_step_s=k["implied_step_s"],
        share_of_step=share, tpot_share=tpot_share)


def projection_statements(projections: dict[tuple[str, str], dict], hw: Hardware) -> list[dict]:
    """Statements that compare claims with projections of the compiled programs.

    `projections` maps (table, layout spec) to `analysis.project.project` results; statements whose
    projections are missing are left out.
    """
    checks = {(c.table, c.layout): check_claim(c, hw) for c in CLAIMS}
    out = [_against_projection(c, projections[(c.table, c.layout)], checks[(c.table, c.layout)],
                               hw) for c in CLAIMS if (c.table, c.layout) in projections]
    out += [_ranking_statement(table, base, new, projections) for table, base, new in PAIRS
            if (table, base) in projections and (table, new) in projections]
    if ("moe", "ep") in projections:
        out.append(_ep_volume_statement(projections[("moe", "ep")], checks[("moe", "ep")]))
    return out


def cannot_hold(hw: Hardware, projections: dict[tuple[str, str], dict] | None = None) -> list[dict]:
    """All statements: from the claims alone, then against the projections given."""
    return claim_statements(hw) + projection_statements(projections or {}, hw)
