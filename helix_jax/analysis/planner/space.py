"""The planner's search space: every legal layout of a model on N devices, with the options that
change its program or its price in the chosen mode.

For each layout kind, every factorisation of N into its mesh axes and `dp=K` data replicas:

  dp        dp=N, with and without fsdp
  helix     m x n x dp (helix-ep for MoE models: the same program, experts over the m x n
            devices), every attention core where m > 1
  tp-pp     tp x pp x dp, with sp where tp > 1. Forward: microbatches among the divisors of the
            per-replica batch and the node placement where pp > 1. Training steps composed from
            one stage (pp > 1 or dp > 1): microbatches among the divisors, schedule gpipe / 1f1b,
            virtual stages among the divisors of the stage's layers, tp_overlap where tp > 1 and sp
            (what `helix train` runs: collective matmuls replace sequence parallelism's
            collectives).
  ep        ep x dp (MoE), chunks 1, 2, 4, 8 in forward and training
  kvp       kvp x tp x dp with kvp > 1

plus, in training, each remat policy, and the gspmd partitioner where the layout runs under it (by
default in forward passes only: `default_gspmd`). Options that change neither the program nor its
price in a mode are not enumerated (a forward pass has no schedule; a composed step ignores
placement). Mesh shapes that reduce to plain data parallelism (helix m = n = 1, tp-pp tp = pp = 1,
ep = 1) are left to `dp`.
Every candidate passes `Layout.validate`; what fails is counted by reason.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from helix_jax.analysis.costmodel.compose import is_composed
from helix_jax.config import ModelConfig
from helix_jax.enums import Mode, Partitioner, Remat, Schedule, choices
from helix_jax.layouts import CORES, LAYOUTS, Layout, parse_layout
from helix_jax.limits import MAX_SPECS, MAX_WHOLE_DEVICES

MODES = choices(Mode)
REMATS = choices(Remat)
EP_CHUNKS = (1, 2, 4, 8)



@dataclass(frozen=True)
class Candidate:
    """One point of the search space: a layout, its remat policy (training) and partitioner."""

    layout: Layout
    remat: str = "none"
    partitioner: str = "shard_map"
    train: bool = False

    @property
    def label(self) -> str:
        """`spec[@remat][@gspmd]` with the spec's default options left out: the name tables,
        JSON and `--explain` use (it parses back to the same candidate)."""
        out = short_spec(self.layout) + (f"@{self.remat}" if self.train else "")
        return out + (f"@{self.partitioner}" if self.partitioner != "shard_map" else "")

    @property
    def composed(self) -> bool:
        """Whether `project` composes this training step from one stage's program."""
        return is_composed(self.layout, "train" if self.train else "forward")


def short_spec(layout: Layout) -> str:
    """The layout's spec without the options at their defaults: `tp-pp:pp=4,microbatches=8`."""
    defaults = LAYOUTS[layout.kind].defaults
    opts = ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                    for k, v in layout.options.items() if defaults.get(k) != v)
    return f"{layout.kind}:{opts}" if opts else layout.kind


def default_gspmd(mode: str) -> bool:
    """Whether gspmd candidates join by default: in forward passes. Not in training steps: XLA's
    choice of collectives has no cheap bound, so each would cost a whole training-step compile of
    its own (`--partitioners both` adds them)."""
    return mode == "forward"


def parse_candidate(text: str, mode: str) -> Candidate:
    """`spec[@remat][@partitioner]` -> a Candidate (ValueError naming what is wrong)."""
    spec, *extras = text.strip().split("@")
    layout = parse_layout(spec)
    remat, partitioner = "none", "shard_map"
    for extra in extras:
        if extra in REMATS:
            if mode != "train":
                raise ValueError(f"{text!r}: a remat policy (@{extra}) applies to --mode train only")
            remat = extra
        elif extra in choices(Partitioner):
            partitioner = extra
        else:
            raise ValueError(f"{text!r}: cannot read @{extra}; after the layout spec come "
                             f"@{'|@'.join(REMATS)} (training) and @shard_map|@gspmd")
    return Candidate(layout, remat, partitioner, mode == "train")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _specs(cfg: ModelConfig, n: int, mode: str, max_micro: int = 0) -> list[str]:
    """Layout specs for `n` devices before validation (see the module doc)."""
    train, serve = mode == "train", mode in ("prefill", "decode")
    if n == 1:
        return ["single"]
    specs = [f"dp:dp={n}", f"dp:dp={n},fsdp=true"]
    for dp in _divisors(n):
        rest = n // dp
        if rest == 1:
            continue
        for m in _divisors(rest):
            heads = rest // m
            kind = "helix-ep" if cfg.is_moe else "helix"
            for core in (CORES if m > 1 else ("score_psum",)):
                specs.append(f"{kind}:m={m},n={heads},core={core},dp={dp}")
        for tp in _divisors(rest):
            specs += _tp_pp_specs(cfg, tp, rest // tp, dp, mode, max_micro)
        if cfg.is_moe:
            for chunks in (EP_CHUNKS if not serve else (1,)):
                specs.append(f"ep:ep={rest},chunks={chunks},dp={dp}")
        for kvp in _divisors(rest)[1:]:
            specs.append(f"kvp:kvp={kvp},tp={rest // kvp},dp={dp}")
    if train and n > MAX_WHOLE_DEVICES:
        specs = [s for s in specs if s.startswith("tp-pp")]
    return specs


def _tp_pp_specs(cfg: ModelConfig, tp: int, pp: int, dp: int, mode: str,
                 max_micro: int = 0) -> list[str]:
    if pp > 1 and cfg.n_layers % pp:
        return [f"tp-pp:tp={tp},pp={pp},dp={dp}"]  # illegal: validate says why
    base = f"tp-pp:tp={tp},pp={pp},dp={dp}"
    sps = ("false", "true") if tp > 1 else ("false",)
    per_replica = max(cfg.batch // dp, 1)
    out = []
    if is_composed(parse_layout(base), mode):
        for M in _divisors(per_replica):
            if max_micro and per_replica // M > max_micro:
                continue
            for schedule in Schedule:  # with pp = 1: 1f1b keeps one microbatch
                virtuals = _divisors(cfg.n_layers // pp) if schedule == "1f1b" and pp > 1 else [1]
                for v in virtuals:
                    for overlap in (("false", "true") if tp > 1 else ("false",)):
                        for sp in sps:
                            if overlap == "true" and sp == "false":
                                continue  # collective matmuls are sp's collectives: not run
                            out.append(f"{base},microbatches={M},sp={sp},schedule={schedule},"
                                       f"virtual={v},tp_overlap={overlap}")
        return out
    if tp == 1 and pp == 1:
        return []  # plain data parallelism
    microbatches = _divisors(per_replica) if (mode == "forward" and pp > 1) else [1]
    places = ("tensor-inner", "stage-inner") if pp > 1 else ("tensor-inner",)
    for M in microbatches:
        for place in places:
            for sp in sps:
                out.append(f"{base},microbatches={M},sp={sp},place={place}")
    return out


def enumerate_candidates(cfg: ModelConfig, devices: int, mode: str,
                         kinds: tuple[str, ...] | None = None, gspmd: bool | None = None,
                         max_micro: int = 0, max_tp: int = 0) -> tuple[list[Candidate], Counter]:
    """The legal candidates for `devices` devices in `mode`, and the count of illegal ones by
    reason (the first clause of `Layout.validate`'s message, numbers left out). `max_micro` > 0
    keeps composed training steps to microbatches of at most that many sequences; `max_tp` > 0
    keeps tp-pp's tensor parallelism to at most that many devices."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if devices < 1:
        raise ValueError(f"--devices {devices} must be at least 1")
    gspmd = default_gspmd(mode) if gspmd is None else gspmd
    train = mode == "train"
    legal: list[Candidate] = []
    illegal: Counter = Counter()
    seen: set[str] = set()
    specs = _specs(cfg, devices, mode, max_micro)
    if len(specs) > MAX_SPECS:
        raise ValueError(f"{devices:,} devices give {len(specs):,} layouts to search, more than "
                         f"the {MAX_SPECS:,} a plan takes; narrow it with --kinds, --max-tp or "
                         f"--max-micro")
    for spec in specs:
        layout = parse_layout(spec)
        if kinds and layout.kind not in kinds:
            continue
        if max_tp and layout.kind == "tp-pp" and layout.options["tp"] > max_tp:
            continue
        if layout.spec in seen:
            continue
        seen.add(layout.spec)
        try:
            layout.validate(cfg)
        except ValueError as e:
            illegal[_reason(str(e))] += 1
            continue
        partitioners = ["shard_map"]
        if gspmd and _gspmd_runs(cfg, layout, mode):
            partitioners.append("gspmd")
        for partitioner in partitioners:
            for remat in (REMATS if train else ("none",)):
                legal.append(Candidate(layout, remat, partitioner, train))
    return legal, illegal


def _gspmd_runs(cfg: ModelConfig, layout: Layout, mode: str) -> bool:
    """Whether the gspmd partitioner applies (`project.check_projection`: not to pipelines,
    composed training steps or KV-cache steps), and gives a program of its own: under gspmd the
    qk_gather core is the same program as score_psum (XLA picks the score reduction)."""
    from helix_jax.analysis.costmodel.project import check_projection

    if layout.options.get("core") == "qk_gather":
        return False
    try:
        check_projection(cfg, layout, mode, "gspmd")
    except ValueError:
        return False
    return True


def _reason(message: str) -> str:
    """'paper-dense on helix:...: head_dim=512 is not divisible by the 16 shards of ...; choose
    ...' -> "head_dim=N is not divisible by the N shards of 'head_dim'" (one bucket per kind of
    failure: numbers and parenthesised details left out)."""
    text = message.split(": ", 1)[-1].split(";")[0]
    text = text.split(" (")[0]
    return re.sub(r"\d+", "N", text).strip()
