"""What the `helix` commands print on the terminal: the model and layout lists, a forward pass, a
decode, a training run, a projection and a reproduce summary. The commands (`helix_jax.commands`)
run the work and hand its results here; nothing here runs a model or imports jax.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from helix_jax.config import PRESETS, ModelConfig
from helix_jax.enums import Mode, Partitioner, Weights
from helix_jax.layouts import LAYOUTS, Layout
from helix_jax.units import gb

# ----------------------------------------------------------------------------- catalog


def print_layouts() -> None:
    """`helix layouts`: each layout kind, what it splits and its options with their defaults."""
    width = max(map(len, LAYOUTS))
    for name, kind in LAYOUTS.items():
        opts = ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                        for k, v in kind.defaults.items())
        print(f"{name:<{width}}  {kind.summary}" + (f"  [{opts}]" if opts else ""))


def params_text(total: int | None, active: int | None) -> str:
    """'70.55B params' or, for a MoE, '46.70B params (12.88B active)'."""
    if total is None:
        return "params not counted"

    def short(n: int) -> str:
        for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
            if n >= scale:
                return f"{n / scale:.2f}{unit}"
        return str(n)
    return f"{short(total)} params" + (f" ({short(active)} active)" if active != total else "")


def model_text(c: ModelConfig) -> str:
    """One line: the blocks and shape of a model."""
    heads = (f"{c.n_heads}x{c.head_dim} heads" + (f" ({c.kv_heads} K/V)" if c.kv_heads != c.n_heads
                                                  else ""))
    kind = (f"MoE {c.n_experts} experts top-{c.top_k}, expert F {c.expert_d_ff}" if c.is_moe
            else f"F {c.d_ff}")
    blocks = ", ".join(b for b in (c.norm, c.ffn, c.position != "none" and c.position) if b)
    return f"{c.n_layers} layers, {heads}, D {c.d_model}, {kind}, {blocks}"


def print_models() -> None:
    """`helix models`: each preset's shape, parameter count (from the model's own parameter
    shapes) and run shape."""
    from helix_jax.counts import param_counts

    for name, c in PRESETS.items():
        print(f"{name:<14} {model_text(c)}; {params_text(*param_counts(c))}; "
              f"batch {c.batch} x seq {c.seq}, {c.dtype}")


# ----------------------------------------------------------------------------- runs


def _warn_non_finite(output: Any) -> None:
    import numpy as np

    if not np.isfinite(output).all():
        print("warning  the output has non-finite values", file=sys.stderr)


def print_forward(cfg: ModelConfig, layout: Layout, *, partitioner: str, platform: str,
                  hosts: str, input_shape: tuple, output: Any, stats: dict, first_s: float,
                  times: list[float], weights: str = "model") -> None:
    """`helix forward`: model, layout, mesh, shapes, MoE drops per layer and the timing (`hosts`:
    the processes the mesh spans, `distributed.describe()`)."""
    import numpy as np

    mesh = " x ".join(f"{a}={n}" for a, n in layout.axis_sizes.items())
    print(f"model    {cfg.name}: {cfg.n_layers} layers, {cfg.n_heads}x{cfg.head_dim} heads, "
          f"D {cfg.d_model}, F {cfg.d_ff}" + (f", {cfg.n_experts} experts top-{cfg.top_k}"
                                              if cfg.is_moe else "") + f", {cfg.dtype}")
    _print_weights(weights)
    print(f"layout   {layout.spec}" + (f" (partitioner {partitioner}: XLA chose the "
                                           f"collectives)" if partitioner == Partitioner.GSPMD
                                           else ""))
    print(f"mesh     {mesh} on {layout.devices} {platform} device(s){hosts}")
    print(f"shapes   input {tuple(input_shape)} -> output {tuple(output.shape)}, "
          f"causal={cfg.causal}")
    if cfg.is_moe:
        dropped = np.asarray(stats["dropped"]).astype(int).tolist()
        routed = int(np.asarray(stats["routed"])[0])
        print(f"dropped  {dropped} of {routed} token-expert assignments per layer "
              f"(capacity factor {cfg.capacity_factor})")
    timing = f"first call {first_s:.2f} s (compile + run)"
    if times:
        med = float(np.median(times))
        tokens = cfg.batch * cfg.seq
        timing += f"; median of {len(times)} runs {med * 1e3:.1f} ms = {tokens / med:,.0f} tokens/s"
    print(f"time     {timing}")
    _warn_non_finite(output)


def print_decode(cfg: ModelConfig, layout: Layout, prompt_len: int, run: Any,
                 weights: str = "model") -> None:
    """`helix decode`: time to first token and per-token latency (`run`: a `decode.DecodeRun`)."""
    steps = cfg.seq - prompt_len
    print(f"model    {cfg.name} on {layout.describe()}, batch {cfg.batch}, context {cfg.seq}")
    _print_weights(weights)
    print(f"prefill  {prompt_len} positions: time to first token {run.ttft_s * 1e3:.1f} ms "
          f"(compiled both programs in {run.compile_s:.1f} s before timing)")
    print(f"decode   {steps} steps: per token median {run.median_s * 1e3:.2f} ms, p90 "
          f"{run.p90_s * 1e3:.2f} ms = {cfg.batch / run.median_s:,.0f} tokens/s")
    _warn_non_finite(run.output)


def _print_weights(weights: str) -> None:
    """The line of a run with float8 weights (nothing for the model's own dtype)."""
    if weights == Weights.FLOAT8:
        print("weights  float8: float8_e4m3fn matmul weights with float32 per-output-channel "
              "scales, each matmul W8A8 (its activation rounded to float8 with a per-tensor "
              "scale); embedding, norms, biases and router in the model's dtype")


def print_generated(prompt: list, gen) -> None:
    """`helix decode --generate N`: the first sequence's prompt tokens, the tokens generated and
    the time of the one on-device call that made them (`decode.Generated`)."""
    print(f"generate greedy, first sequence: {prompt} -> {gen.tokens[0].tolist()}")
    print(f"generate {gen.tokens.shape[1]} tokens in one device call (prefill + on-device loop, "
          f"one host sync): {gen.seconds * 1e3:.1f} ms, {gen.ms_per_token:.2f} ms per token "
          f"(compiled in {gen.compile_s:.1f} s)")


def training_header(cfg: ModelConfig, layout: Layout, hosts: str, steps: int,
                    log: str | None) -> str:
    """The line `helix train` starts with: what trains where, for how long, and where it logs."""
    return (f"training {cfg.name} on {layout.describe()}{hosts} for {steps} steps (batch "
            f"{cfg.batch} x seq {cfg.seq}); log: {log or 'none (--log FILE keeps one)'}")


def print_training(result: dict, profile: str | None) -> None:
    """`helix train`'s last lines: the loss from first to last step, and where the trace went."""
    history = result["history"]
    if history:
        print(f"loss {history[0]['loss']:.4f} -> {history[-1]['loss']:.4f} over steps "
              f"{history[0]['step']}..{history[-1]['step']}")
    else:
        print(f"nothing to do: the checkpoint is already at step {result['start_step']}")
    if profile:
        print(f"profile trace in {profile} (open with TensorBoard or ui.perfetto.dev)")


# ----------------------------------------------------------------------------- projections


def step_sentence(p: dict) -> str:
    """'0.058 s = compute 0.033 s + exposed comm 0.021 s + optimizer 0.004 s (...)': every term
    the step is the sum of (a composed training step prices its optimizer update apart; a whole
    compiled program has it inside compute)."""
    terms = [("compute", p["compute_seconds"]), ("exposed comm", p["exposed_comm_seconds"])]
    if "optimizer_seconds" in p:
        terms.append(("optimizer", p["optimizer_seconds"]))
    elif "pipeline_seconds" in p:  # a pipeline compiled whole: the schedule's critical path
        terms.append(("critical path beyond busy", p["step_seconds"] - p["compute_seconds"]
                      - p["exposed_comm_seconds"]))
    text = " + ".join(f"{name} {v:.4g} s" for name, v in terms)  # 4 digits: tiny models too
    rest = p["step_seconds"] - sum(v for _, v in terms)
    if abs(rest) > 1e-9 * max(p["step_seconds"], 1e-12):  # decode: the HBM floor sets the step
        text = f"max({text}, HBM floor {p.get('hbm_floor_seconds', 0.0):.4g} s)"
    return f"{p['step_seconds']:.4g} s = {text} (all comm {p['comm_seconds']:.4g} s)"


def _collectives_table(r: dict, what: str):
    from rich.table import Table

    table = Table(title=f"collectives per device per {what} (read from the compiled HLO)")
    for col in ("op", "dtype", "group", "count", "payload/exec", "total", "link", "time"):
        table.add_column(col, justify="left" if col in ("op", "dtype", "link") else "right")
    for c in r["collectives"]:
        table.add_row(c["op"], c["dtype"], str(c["group_size"]), f"{c['count']:,}",
                      f"{c['payload_bytes_per_device'] / 1e6:,.1f} MB",
                      gb(c["payload_bytes_per_device"] * c["count"]), c["link"],
                      f"{c['seconds']:.3f} s")
    return table


def _totals(r: dict, mode: str) -> str:
    """FLOPs, memory, communication, the step and the projected rates, one per line."""
    p, m, comm = r["projected"], r["memory"], r["comm_bytes_per_device"]
    fits = "fits" if r["fits"] else "[red]does NOT fit[/]"
    if "argument_bytes" in m:  # read off the whole compiled program
        memory = (f"args {gb(m['argument_bytes'])} + out {gb(m['output_bytes'])} + temp "
                  f"{gb(m['temp_bytes'])} - alias {gb(m['alias_bytes'])}")
    else:  # composed: by formula
        memory = r["fits_why"].split(": ", 1)[-1]
    return (
        f"FLOPs/device  {r['flops_per_device']:.3e} ({r['flops_note']}); model FLOPs/token "
        f"{r['model_flops_per_token']:.3e}\n"
        f"memory/device {gb(r['memory_bytes_per_device'])} ({fits}: {memory})\n"
        f"comm/device   NVLink {gb(comm['nvlink'])}, InfiniBand {gb(comm['ib'])}\n"
        f"step          {step_sentence(p)}\n"
        f"projected     {p['tokens_per_s']:,.0f} tokens/s, MFU {p['mfu']:.1%}, "
        + (f"TPOT {p['tpot_ms']:.3f} ms (one decode step)" if mode == Mode.DECODE else
           f"TPOT {p['tpot_ms']:.3f} ms (step / seq)"))


def print_projection(r: dict) -> None:
    """A readable table of one projection (what `helix project` prints)."""
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 110)
    mesh = " x ".join(f"{a}={n}" for a, n in r["mesh"].items())
    console.print(f"[bold]{r['model']}[/] on [bold]{r['layout']}[/] \\[{mesh}], batch {r['batch']} x "
                  f"seq {r['seq']} {r['dtype']}"
                  + (", float8 weights" if r.get("weights") == Weights.FLOAT8 else "")
                  + f", priced on {r['hardware']}; "
                  f"batch_chunks={r['batch_chunks']}; intra-node axes: "
                  f"{', '.join(r['intra_node_axes']) or 'none'}")
    mode = r.get("mode", Mode.FORWARD)
    console.print(f"model: {params_text(r.get('params_total'), r.get('params_active'))}")
    console.print(f"compiled: {r.get('compiled', 'the whole program')}")
    for item in r.get("extended_by_formula", []):
        console.print(f"  extended by formula: {item}")
    what = "one stage's microbatch" if r.get("microbatch_size") else f"{mode} step"
    console.print(_collectives_table(r, what))
    console.print(_totals(r, mode))
    p = r["projected"]
    if "hbm_floor_seconds" in p:
        console.print(f"HBM floor     {p['hbm_floor_seconds'] * 1e3:.3f} ms (weights + KV cache at "
                      f"the profile's HBM bandwidth){': the step is HBM-bound' if p['hbm_bound'] else ''}")
    if "ring_comm_seconds" in p:
        console.print(f"ring          {p['ring_hidden_seconds']:.4g} s of {p['ring_comm_seconds']:.4g}"
                      f" s of K/V passes hidden behind the attention of the step they overlap")
    parts = {k: p[k] for k in ("pipeline_seconds", "bubble_seconds", "tensor_comm_seconds",
                               "pipeline_send_seconds", "data_parallel_exposed_seconds",
                               "optimizer_seconds") if k in p}
    if parts:
        console.print("breakdown     " + ", ".join(f"{k.removesuffix('_seconds')} {v:.3f} s"
                                                   for k, v in parts.items()))
    if not r["fits"] and r.get("fits_why"):
        console.print(f"[red]does not fit[/]: {r['fits_why']}")


# ----------------------------------------------------------------------------- reproduce


def print_reproduce_summary(report: dict, out_dir: str | Path) -> None:
    """What `helix reproduce` prints once the report is written: each row's projected tokens/s
    beside the paper's claim, the summary's last sentence, the failing checks and the files."""
    from helix_jax.report.reproduce import headline

    for t in report["tables"].values():
        print(f"{t['model']} on {report['meta']['hardware']}:")
        for r in t["rows"]:
            p, c = r.get("projection"), r["claim"]
            got = f"{p['tokens_per_s']:>12,.0f} tokens/s projected" if p else "   projection failed"
            if p and not p["fits"]:
                got += f" (needs {p['memory_gb']:.0f} GB per GPU: does not fit)"
            said = f"  (paper: {c['tokens_per_s']:,.0f})" if c else ""
            print(f"  {r['row']:<22}{got}{said}")
    for line in headline(report)[-1:]:
        print(line)
    broken = [s for s in report["cannot_hold"] if s["verdict"].startswith(("cannot", "incons"))]
    print(f"{len(broken)} of {len(report['cannot_hold'])} checks of the paper's figures fail; "
          f"see {Path(out_dir) / 'reproduce.md'}")
    print(f"wrote {', '.join(str(Path(out_dir) / f) for f in report['files'])} "
          f"in {report['meta']['elapsed_s']:.0f} s")
