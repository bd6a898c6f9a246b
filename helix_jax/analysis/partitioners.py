"""The hand-written program against XLA's: what GSPMD does with the same layout's specs.

`compare` takes two projections of one model on one layout (`project(..., partitioner=...)`), the
shard_map program (every collective written through `Comm`) and the gspmd one (XLA's SPMD
partitioner choosing them from the same rules' shardings), and says:

  needed / extra  each collective of the gspmd program is matched against the hand-written
                  program's traffic in the same op over the same mesh axes (bytes moved per step);
                  what is left over is a collective the layout's math does not need, reported
                  with its HLO op and the source line XLA attributes it to;
  missing         hand-written traffic the gspmd program does without (or moves by another op);
  qk              for head-dim-sharded attention, which strategy XLA chose for QKᵀ;
  verdict         matches / beats / loses on the projected step time (within 1 %: matches).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

MATCH_TOLERANCE = 0.01  # step times within 1 % of each other match
# Cores whose scores the gspmd program leaves unconstrained: what XLA does to QKᵀ is its choice.
UNCONSTRAINED_CORES = ("score_psum", "qk_gather")


def _key(site: dict) -> tuple[str, tuple[str, ...] | None]:
    return site["op"], tuple(site["axes"]) if site["axes"] is not None else None


def _bytes(site: dict) -> float:
    return site["payload_bytes"] * site["count"]


def _function(site: dict) -> str:
    """The function of the source line, e.g. 'Attention._out' ('' when unknown)."""
    source = site.get("source", "")
    return source[source.rfind("(") + 1:-1] if source.endswith(")") else ""


def match_sites(hand: list[dict], xla: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """(needed, extra, missing): the gspmd sites the hand-written traffic covers, those it does
    not (with `extra_bytes`), and the hand-written traffic left uncovered per (op, axes).

    Per (op, mesh axes) the hand-written program's bytes per step are a budget; gspmd sites of the
    same payload as a hand-written one are matched first, then those from a function that also
    holds a hand-written one of the same op and axes, then the rest, largest first (so that what
    is left over is blamed on the line that adds it)."""
    budget: dict[tuple, float] = defaultdict(float)
    payloads: dict[tuple, set[int]] = defaultdict(set)
    functions: dict[tuple, set[str]] = defaultdict(set)
    for s in hand:
        budget[_key(s)] += _bytes(s)
        payloads[_key(s)].add(s["payload_bytes"])
        functions[_key(s)].add(_function(s))
    order = sorted(xla, key=lambda s: (s["payload_bytes"] not in payloads[_key(s)],
                                       _function(s) not in functions[_key(s)], -_bytes(s)))
    needed, extra = [], []
    for s in order:
        key, moved = _key(s), _bytes(s)
        covered = min(moved, budget[key])
        budget[key] -= covered
        if covered >= moved * (1 - 1e-9):
            needed.append(s)
        else:
            extra.append({**s, "extra_bytes": moved - covered,
                          "extra_seconds": s["seconds"] * (moved - covered) / moved})
    missing = [{"op": op, "axes": list(axes) if axes is not None else None, "bytes": left}
               for (op, axes), left in budget.items() if left > 0]
    return needed, extra, missing


def in_attention_core(site: dict) -> bool:
    return "attention_core" in site.get("op_name", "")


QK_STRATEGIES = {
    "all-reduce": "all-reduce of the partial scores q_ij·k_ijᵀ over the head-dim shards "
                  "(score_psum's strategy)",
    "all-gather": "all-gather of q and k to the full head dim (qk_gather's strategy)",
    "all-to-all": "all-to-all to a query-sequence split (seq_a2a's strategy)",
}


def qk_strategy(sites: list[dict]) -> dict:
    """What the program does to QKᵀ inside the attention core: strategy, bytes, seconds."""
    core = [s for s in sites if in_attention_core(s)]
    ops = sorted({s["op"] for s in core})
    if not ops:
        text = "no collective inside the attention core"
    elif len(ops) == 1 and ops[0] in QK_STRATEGIES:
        text = QK_STRATEGIES[ops[0]]
    else:
        text = "other: " + ", ".join(ops)
    return {"strategy": text, "ops": ops,
            "bytes_per_device": sum(_bytes(s) for s in core),
            "seconds": sum(s["seconds"] for s in core),
            "collectives": [{k: s[k] for k in ("op", "axes", "payload_bytes", "count", "seconds",
                                                "source")} for s in core]}


def summary(p: dict) -> dict:
    """The headline numbers of one projection, for the side-by-side."""
    pr = p["projected"]
    return {"step_seconds": pr["step_seconds"], "compute_seconds": pr["compute_seconds"],
            "compute_breakdown": pr.get("compute_breakdown", {}),
            "comm_seconds": pr["comm_seconds"], "exposed_comm_seconds": pr["exposed_comm_seconds"],
            "tokens_per_s": pr["tokens_per_s"], "flops_per_device": p["flops_per_device"],
            "memory_bytes_per_device": p["memory_bytes_per_device"], "fits": p["fits"],
            "comm_bytes_per_device": sum(p["comm_bytes_per_device"].values()),
            "batch_chunks": p["batch_chunks"], "collectives": p["collectives"]}


def executions(hand: list[dict], xla: list[dict]) -> list[dict]:
    """Per (op, mesh axes), how many times each program runs such a collective per step, where
    the two differ (the same bytes in fewer, larger pieces, or the reverse)."""
    counts: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for i, sites in enumerate((hand, xla)):
        for s in sites:
            counts[_key(s)][i] += s["count"]
    return [{"op": op, "axes": list(axes) if axes is not None else None, "shard_map": a,
             "gspmd": b} for (op, axes), (a, b) in counts.items() if a != b and a and b]


def verdict(hand_seconds: float, xla_seconds: float) -> str:
    """matches / beats / loses: the gspmd program's projected step against the hand-written one."""
    if abs(xla_seconds - hand_seconds) <= MATCH_TOLERANCE * hand_seconds:
        return "matches"
    return "beats" if xla_seconds < hand_seconds else "loses"


def compare(hand: dict, xla: dict) -> dict:
    """Both programs of one layout side by side (see module doc). `hand` and `xla` are
    projections with partitioner shard_map and gspmd."""
    if (hand.get("partitioner"), xla.get("partitioner")) != ("shard_map", "gspmd"):
        raise ValueError("compare needs a shard_map and a gspmd projection, in that order")
    _, extra, missing = match_sites(hand["collective_sites"], xla["collective_sites"])
    from helix_jax.layouts import parse_layout

    layout = parse_layout(hand["layout"])
    out = {
        "model": hand["model"], "layout": hand["layout"], "mode": hand["mode"],
        "hardware": hand["hardware"], "mesh": hand["mesh"],
        "shard_map": summary(hand), "gspmd": summary(xla),
        "verdict": verdict(hand["projected"]["step_seconds"], xla["projected"]["step_seconds"]),
        "extra": extra, "missing": missing,
        "executions": executions(hand["collective_sites"], xla["collective_sites"]),
        "extra_bytes_per_device": sum(s["extra_bytes"] for s in extra),
        "extra_seconds": sum(s["extra_seconds"] for s in extra),
        "same_batch_chunks": hand["batch_chunks"] == xla["batch_chunks"],
    }
    if layout.size("head_dim") > 1 and layout.options.get("core") in UNCONSTRAINED_CORES:
        out["qk"] = {"gspmd": qk_strategy(xla["collective_sites"]),
                     "shard_map": qk_strategy(hand["collective_sites"]),
                     "core": layout.options.get("core")}
    return out


def project_both(cfg, layout, hw, batch_chunks: int | None = None,
                 progress: Callable[[str], None] | None = None, mode: str = "forward",
                 remat: str = "none") -> dict:
    """Project `cfg` on `layout` under both partitioners and compare them: {"shard_map",
    "gspmd" (the two projections), "comparison"}. The gspmd program walks the batch in as many
    chunks as the hand-written one was fitted with, so both hold the same work per step."""
    from helix_jax.analysis.costmodel.project import check_projection, project

    check_projection(cfg, layout, mode, "gspmd")
    hand = project(cfg, layout, hw, batch_chunks=batch_chunks, progress=progress, mode=mode,
                   remat=remat).to_dict()
    xla = project(cfg, layout, hw, batch_chunks=hand["batch_chunks"], progress=progress,
                  mode=mode, remat=remat, partitioner="gspmd").to_dict()
    return {"shard_map": hand, "gspmd": xla, "comparison": compare(hand, xla)}
