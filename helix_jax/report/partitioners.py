"""The side-by-side read-out of the two partitioners: the terminal print of `helix project
--partitioner both`, the Markdown of results/partitioners.md and its conclusions.

The numbers come from `helix_jax.analysis.partitioners.compare` (both programs compiled and
priced); this module only words and lays them out.
"""

from __future__ import annotations

import sys
from collections import defaultdict

from helix_jax.report.fmt import human, num

PROGRAMS = (("shard_map", "hand-written (shard_map)"), ("gspmd", "XLA's (gspmd)"))


def axes_text(axes: list[str] | None) -> str:
    return "?" if axes is None else "+".join(axes)


def size(n_bytes: float) -> str:
    """Bytes, short: 262144 -> '262kB', 5.24e9 -> '5.24GB'."""
    return f"{human(n_bytes)}B"


def secs(x: float) -> str:
    return f"{x:.3g} s"


def site_rows(sites: list[dict]) -> list[dict]:
    """Collectives grouped by op, mesh axes, payload and source line (counts and time summed),
    costliest first."""
    rows: dict[tuple, dict] = {}
    for s in sites:
        key = (s["op"], axes_text(s["axes"]), s["payload_bytes"], s.get("source", ""))
        row = rows.setdefault(key, {"op": s["op"], "axes": axes_text(s["axes"]),
                                    "group_size": s["group_size"], "dtype": s["dtype"],
                                    "payload_bytes": s["payload_bytes"], "count": 0,
                                    "seconds": 0.0, "link": s["link"], "source": key[3]})
        row["count"] += s["count"]
        row["seconds"] += s["seconds"]
    return sorted(rows.values(), key=lambda r: -r["seconds"])


def metric_rows(c: dict) -> list[tuple[str, str, str]]:
    """(metric, shard_map, gspmd) for the headline numbers."""
    a, b = c["shard_map"], c["gspmd"]
    return [
        ("step (projected)", secs(a["step_seconds"]), secs(b["step_seconds"])),
        ("compute", secs(a["compute_seconds"]), secs(b["compute_seconds"])),
        ("exposed communication", secs(a["exposed_comm_seconds"]),
         secs(b["exposed_comm_seconds"])),
        ("communication / device", size(a["comm_bytes_per_device"]),
         size(b["comm_bytes_per_device"])),
        ("FLOPs / device", f"{a['flops_per_device']:.3e}", f"{b['flops_per_device']:.3e}"),
        ("memory / device", size(a["memory_bytes_per_device"]) + ("" if a["fits"] else
                                                                  " (no fit)"),
         size(b["memory_bytes_per_device"]) + ("" if b["fits"] else " (no fit)")),
        ("tokens/s (projected)", num(a["tokens_per_s"]), num(b["tokens_per_s"])),
        ("batch chunks", str(a["batch_chunks"]), str(b["batch_chunks"])),
    ]


def qk_line(c: dict) -> str | None:
    """What XLA chose for QKᵀ and what it costs, against the hand-written core."""
    qk = c.get("qk")
    if not qk:
        return None
    x, h = qk["gspmd"], qk["shard_map"]
    return (f"QKᵀ with the head dim split (core={qk['core']}, scores left unconstrained): XLA "
            f"chose the {x['strategy']}: {size(x['bytes_per_device'])} per device per step, "
            f"{secs(x['seconds'])}; the hand-written core moves {size(h['bytes_per_device'])} "
            f"({secs(h['seconds'])})")


def verdict_line(c: dict) -> str:
    a, b = c["shard_map"]["step_seconds"], c["gspmd"]["step_seconds"]
    change = (b - a) / a if a else 0.0
    return (f"GSPMD {c['verdict']} the hand-written program: step {secs(b)} against {secs(a)} "
            f"({change:+.1%})")


def print_comparison(r: dict) -> None:
    """`helix project --partitioner both`: both programs' collectives, numbers and the flags."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    c = r["comparison"]
    console = Console(width=None if sys.stdout.isatty() else 130)
    mesh = " x ".join(f"{a}={n}" for a, n in c["mesh"].items())
    console.print(f"[bold]{c['model']}[/] on [bold]{c['layout']}[/] {escape(f'[{mesh}]')}, "
                  f"{c['mode']}, priced on {c['hardware']}: the hand-written program against "
                  f"XLA's from the same specs")
    for key, title in PROGRAMS:
        table = Table(title=f"collectives per device per step, {title}")
        for col in ("op", "mesh axes", "group", "payload/exec", "count", "total", "link", "time",
                    "source line"):
            table.add_column(col, justify="left" if col in ("op", "mesh axes", "link",
                                                           "source line") else "right")
        for row in site_rows(r[key]["collective_sites"]):
            table.add_row(row["op"], row["axes"], str(row["group_size"]),
                          size(row["payload_bytes"]), f"{row['count']:,}",
                          size(row["payload_bytes"] * row["count"]), row["link"],
                          secs(row["seconds"]), row["source"])
        console.print(table)
    table = Table(title="side by side")
    table.add_column("")
    for _, title in PROGRAMS:
        table.add_column(title, justify="right")
    for row in metric_rows(c):
        table.add_row(*row)
    console.print(table)
    if c["extra"]:
        console.print("[bold]not needed by the layout's math[/] (collectives of the gspmd program "
                      "beyond the hand-written traffic in the same op over the same axes):")
        for line in extra_lines(c):
            console.print(f"  {escape(line)}")
    else:
        console.print("every collective of the gspmd program is traffic the hand-written program "
                      "also moves (same op, same mesh axes)")
    for line in missing_lines(c):
        console.print(f"  hand-written only: {line}")
    if (line := qk_line(c)) is not None:
        console.print(line)
    console.print(verdict_line(c))


def extra_lines(c: dict) -> list[str]:
    return [f"{e['op']} over {axes_text(e['axes'])} of {size(e['payload_bytes'])} x "
            f"{e['count']:,} ({size(e['extra_bytes'])} beyond the hand-written, "
            f"{secs(e['extra_seconds'])}) at {e['source'] or '?'} [HLO `{e['name']}`: "
            f"`{e['op_name']}`]" for e in sorted(c["extra"], key=lambda e: -e["extra_seconds"])]


def missing_lines(c: dict) -> list[str]:
    return [f"{m['op']} over {axes_text(m['axes'])}, {size(m['bytes'])} that the gspmd program "
            f"does not move this way" for m in c["missing"]]


# ----------------------------------------------------------------------------- Markdown

def memory(side: dict) -> str:
    """GB per device, marked when it does not fit the profile's HBM."""
    return f"{side['memory_bytes_per_device'] / 1e9:.1f}" + ("" if side["fits"] else " (no fit)")


def summary_table(rows: list[dict]) -> list[str]:
    """One line per layout: verdict and the numbers that decide it."""
    head = ("| layout | mode | verdict | step s (hand / XLA) | comm GB (hand / XLA) | memory GB "
            "(hand / XLA) | collectives not needed (time) |")
    out = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:  # the message without the layout's canonical spec in front
            out.append(f"| `{r['layout']}` | {r['mode']} | shard_map only | – | – | – | "
                       f"{r['error'].split(': ', 1)[-1]} |")
            continue
        c = r["comparison"]
        a, b = c["shard_map"], c["gspmd"]
        extra = (f"{len(c['extra'])} ({c['extra_seconds']:.2f} s)" if c["extra"] else "none")
        out.append(
            f"| `{r['layout']}` | {c['mode']} | **{c['verdict']}** | {a['step_seconds']:.2f} / "
            f"{b['step_seconds']:.2f} | {a['comm_bytes_per_device'] / 1e9:,.0f} / "
            f"{b['comm_bytes_per_device'] / 1e9:,.0f} | "
            f"{memory(a)} / {memory(b)} | {extra} |")
    return out


def detail(r: dict) -> list[str]:
    """A layout's section: the flagged collectives with their source lines, QKᵀ, the verdict."""
    c = r["comparison"]
    out = [f"### `{r['layout']}` ({c['mode']})", "", f"`{c['layout']}`: {verdict_line(c)}."]
    if c["extra"]:
        out += ["", "Collectives of the gspmd program that the layout's math does not need:", ""]
        out += [f"- {line}" for line in extra_lines(c)]
    for line in missing_lines(c):
        out.append(f"- hand-written only: {line}")
    if (line := qk_line(c)) is not None:
        out += ["", line + "."]
    return out + [""]


def reason(r: dict) -> str:
    """Why one comparison came out as it did: the parts of the step that moved and the
    collectives behind it."""
    c = r["comparison"]
    a, b = c["shard_map"], c["gspmd"]
    change = (b["step_seconds"] - a["step_seconds"]) / a["step_seconds"]
    parts = [f"compute {secs(a['compute_seconds'])} -> {secs(b['compute_seconds'])}",
             (f"exposed communication {secs(a['exposed_comm_seconds'])} -> "
              f"{secs(b['exposed_comm_seconds'])}")]
    for part, name in (("matmul_seconds", "matmul"), ("attention_seconds", "attention kernels"),
                       ("memory_seconds", "memory-bound kernels")):
        x, y = a["compute_breakdown"].get(part, 0.0), b["compute_breakdown"].get(part, 0.0)
        if abs(y - x) > 0.02 * max(a["compute_seconds"], 1e-12):
            parts.append(f"{name} {secs(x)} -> {secs(y)}")
    if a["memory_bytes_per_device"] and abs(b["memory_bytes_per_device"]
                                            / a["memory_bytes_per_device"] - 1) > 0.05:
        parts.append(f"memory {size(a['memory_bytes_per_device'])} -> "
                     f"{size(b['memory_bytes_per_device'])}" + ("" if b["fits"] else
                                                                " (does not fit)"))
    text = (f"`{r['layout']}` {c['mode']} ({r['model']}): {c['verdict']}, {change:+.1%} "
            f"({secs(a['step_seconds'])} -> {secs(b['step_seconds'])}); {', '.join(parts)}")
    top = sorted(c["extra"], key=lambda e: -e["extra_seconds"])[:3]
    if top:
        text += "; not needed: " + ", ".join(
            f"{e['op']} over {axes_text(e['axes'])} at {e['source'] or '?'} "
            f"({secs(e['extra_seconds'])})" for e in top)
    if c.get("executions"):
        text += "; executions per step: " + ", ".join(
            f"{e['op']} over {axes_text(e['axes'])} {e['shard_map']:,} -> {e['gspmd']:,}"
            for e in c["executions"])
    if c["missing"]:
        text += "; hand-written only: " + ", ".join(
            f"{m['op']} over {axes_text(m['axes'])} ({size(m['bytes'])})" for m in c["missing"])
    if (qk := c.get("qk")) is not None:
        text += f"; QKᵀ: XLA chose the {qk['gspmd']['strategy']}"
    return text + "."


def conclusions(rows: list[dict]) -> list[str]:
    """Where GSPMD matches, beats or loses, and why, from the comparisons' own data."""
    done = [r for r in rows if "comparison" in r]
    lines = []
    by_verdict: dict[str, list[str]] = defaultdict(list)
    for r in done:
        by_verdict[r["comparison"]["verdict"]].append(
            f"`{r['layout']}` {r['comparison']['mode']} ({r['model']})")
    for v in ("matches", "beats", "loses"):
        if by_verdict[v]:
            lines.append(f"GSPMD {v} the hand-written program on: {', '.join(by_verdict[v])}.")
    lines += [reason(r) for r in done if r["comparison"]["verdict"] != "matches"
              or r["comparison"]["extra"]]
    causes: dict[str, set[str]] = defaultdict(set)
    for r in done:
        for e in r["comparison"]["extra"]:
            causes[e["source"] or "?"].add(f"`{r['layout']}` {r['comparison']['mode']}")
    if causes:
        lines.append("Source lines XLA attributes the unneeded collectives to: " + "; ".join(
            f"`{src}` ({', '.join(sorted(where))})"
            for src, where in sorted(causes.items(), key=lambda kv: -len(kv[1]))) + ".")
    skipped = sorted({f"`{r['layout']}`" for r in rows if "error" in r})
    if skipped:
        lines.append(f"Shard_map only (not expressible under gspmd): {', '.join(skipped)}.")
    return lines
