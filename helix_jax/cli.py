"""The `helix` command: run, decode, train, project and reproduce the layouts.

jax is imported only after the arguments are read, so the CLI can first give the CPU backend as
many host devices as the layout needs: every command works on a laptop.
"""

from __future__ import annotations

import argparse
import sys
import time

from helix_jax import checks, distributed, errors
from helix_jax.config import DTYPES, PRESETS, resolve_model
from helix_jax.gspmd import check_partitioner
from helix_jax.layouts import LAYOUTS, parse_layout


def _model_args(p: argparse.ArgumentParser, default_model: str, layout: bool = True) -> None:
    """The model, its run shape and (unless `layout` is false) the layout: what every command
    that builds a model takes."""
    p.add_argument("--model", default=default_model, choices=sorted(PRESETS),
                   help=f"model preset (default: {default_model})")
    p.add_argument("--model-file", metavar="FILE.toml",
                   help="a GPT-style model from a TOML file (keys: name, n_layers, d_model, "
                   "n_heads, head_dim, d_ff, vocab; optional n_experts, top_k, capacity_factor, "
                   "causal, ln_eps); overrides --model")
    if layout:
        _layout_arg(p)
    p.add_argument("--batch", type=int, help="batch size (default: the preset's)")
    p.add_argument("--seq", type=int, help="sequence length (default: the preset's)")
    p.add_argument("--dtype", choices=DTYPES, help="compute dtype (default: the preset's)")
    p.add_argument("--causal", action=argparse.BooleanOptionalAction, default=None,
                   help="causal attention mask (default: on)")
    p.add_argument("--q-block", type=int, help="query block of the blockwise attention (0: whole)")
    p.add_argument("--kv-block", type=int, help="key/value block of the blockwise attention")
    p.add_argument("--top-k", type=int, help="MoE: experts per token (default 1)")
    p.add_argument("--capacity-factor", type=float, help="MoE: expert capacity factor (default 1.25)")
    p.add_argument("--normalize-top-k", action="store_true", default=None,
                   help="MoE: renormalise the chosen experts' probabilities")


def _layout_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layout", default="helix", help="layout spec, e.g. helix:m=4,n=4,core=seq_a2a "
                   "(default: helix; `helix layouts` lists them)")


def _partitioner_arg(p: argparse.ArgumentParser, both: bool = False) -> None:
    choices = ("shard_map", "gspmd") + (("both",) if both else ())
    p.add_argument("--partitioner", default="shard_map", choices=choices,
                   help="shard_map: the hand-written collectives (default); gspmd: the same model "
                   "under jax.jit with the layout's shardings, XLA choosing the collectives"
                   + ("; both: compile both and compare them side by side" if both else ""))


def _config(args: argparse.Namespace):
    if args.model_file:
        from helix_jax.config import load_model_file

        base = load_model_file(args.model_file)
        return base.replace(batch=args.batch, seq=args.seq, dtype=args.dtype, causal=args.causal,
                            q_block=args.q_block, kv_block=args.kv_block, top_k=args.top_k,
                            capacity_factor=args.capacity_factor,
                            normalize_top_k=args.normalize_top_k)
    return resolve_model(args.model, batch=args.batch, seq=args.seq, dtype=args.dtype,
                         causal=args.causal, q_block=args.q_block, kv_block=args.kv_block,
                         top_k=args.top_k, capacity_factor=args.capacity_factor,
                         normalize_top_k=args.normalize_top_k)


def _model_and_layout(args: argparse.Namespace):
    """The config and layout the arguments name, checked against each other."""
    cfg, layout = _config(args), parse_layout(args.layout)
    layout.validate(cfg)
    return cfg, layout


def cmd_layouts(args: argparse.Namespace) -> int:
    width = max(map(len, LAYOUTS))
    for name, kind in LAYOUTS.items():
        opts = ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                        for k, v in kind.defaults.items())
        print(f"{name:<{width}}  {kind.summary}" + (f"  [{opts}]" if opts else ""))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    for name, c in PRESETS.items():
        kind = f"MoE {c.n_experts} experts top-{c.top_k}" if c.is_moe else "dense"
        print(f"{name:<12} {c.n_layers} layers, {c.n_heads}x{c.head_dim} heads, D {c.d_model}, "
              f"F {c.d_ff}, {kind}; batch {c.batch} x seq {c.seq}, {c.dtype}")
    return 0


def cmd_forward(args: argparse.Namespace) -> int:
    cfg, layout = _model_and_layout(args)
    check_partitioner(layout, args.partitioner)  # before jax starts
    checks.output_file(args.out, "--out")
    checks.output_dir(args.profile, "--profile")
    if args.params:  # a bad file fails here, before jax starts
        from helix_jax import npz

        arrays, _ = npz.load(args.params)
    if (rc := distributed.start(args, layout.devices)) is not None:
        return rc  # this process launched --num-processes local processes, which did the work

    import jax
    import numpy as np

    from helix_jax import model as M
    from helix_jax import npz

    sharded = M.Sharded.build(cfg, layout, partitioner=args.partitioner)
    if args.params:
        host_params = npz.flat_to_params(arrays, M.param_shapes(cfg), f"--params {args.params}")
    start = time.perf_counter()  # compiled for abstract arguments: nothing allocated yet
    forward = sharded.forward_fn().lower(*sharded.abstract_inputs()).compile()
    compile_s = time.perf_counter() - start
    checks.check_fits([forward], sharded.mesh, f"forward of {cfg.name} on {layout.spec}",
                      checks.WAY_OUT,
                      host_extra=checks.host_copies(cfg, M.param_shapes(cfg) if args.out else None))
    params = sharded.place(host_params) if args.params else sharded.init(args.seed)
    x_host = M.random_input(cfg, args.seed)  # the same on every process
    x = distributed.global_array(np.asarray(x_host).astype(sharded.input_dtype),
                                 sharded.input_sharding)
    distributed.barrier("forward compiled")  # run the first collective only once all compiled
    start = time.perf_counter()
    y, stats = jax.block_until_ready(forward(params, x))
    first = compile_s + time.perf_counter() - start
    times = []
    import contextlib

    tracing = (jax.profiler.trace(args.profile, create_perfetto_trace=True) if args.profile
               else contextlib.nullcontext())
    with tracing:  # the timed runs, after the compiling first call
        for _ in range(max(args.repeat, 1 if args.profile else 0)):
            start = time.perf_counter()
            jax.block_until_ready(forward(params, x))
            times.append(time.perf_counter() - start)
    y, stats = distributed.to_host((y, stats))
    y = y.astype(np.float32)
    host_params = distributed.to_host(params) if args.out else None
    if not distributed.is_main():
        return 0  # process 0 prints and writes

    mesh = " x ".join(f"{a}={n}" for a, n in layout.axis_sizes.items())
    print(f"model    {cfg.name}: {cfg.n_layers} layers, {cfg.n_heads}x{cfg.head_dim} heads, "
          f"D {cfg.d_model}, F {cfg.d_ff}" + (f", {cfg.n_experts} experts top-{cfg.top_k}"
                                              if cfg.is_moe else "") + f", {cfg.dtype}")
    print(f"layout   {layout.spec}" + (f" (partitioner {args.partitioner}: XLA chose the "
                                           f"collectives)" if args.partitioner == "gspmd" else ""))
    print(f"mesh     {mesh} on {layout.devices} {jax.devices()[0].platform} device(s)"
          f"{distributed.describe()}")
    print(f"shapes   input {tuple(x.shape)} -> output {tuple(y.shape)}, causal={cfg.causal}")
    if cfg.is_moe:
        dropped = np.asarray(stats["dropped"]).astype(int).tolist()
        routed = int(np.asarray(stats["routed"])[0])
        print(f"dropped  {dropped} of {routed} token-expert assignments per layer "
              f"(capacity factor {cfg.capacity_factor})")
    timing = f"first call {first:.2f} s (compile + run)"
    if times:
        med = float(np.median(times))
        tokens = cfg.batch * cfg.seq
        timing += f"; median of {len(times)} runs {med * 1e3:.1f} ms = {tokens / med:,.0f} tokens/s"
    print(f"time     {timing}")
    if not np.isfinite(y).all():
        print("warning  the output has non-finite values", file=sys.stderr)
    if args.out:
        npz.save(args.out, cfg, host_params, x_host, y)
        print(f"wrote    {args.out}")
    if args.profile:
        print(f"trace    {args.profile}")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    cfg, layout = _model_and_layout(args)
    checks.prompt_len(args.prompt_len, cfg.seq)
    checks.output_file(args.out, "--out")
    if args.generate is not None and not cfg.vocab:
        raise ValueError("--generate N needs N >= 1 and a model file with vocab > 0")
    if args.generate is not None and args.prompt_len + args.generate > cfg.seq:
        raise ValueError(f"--prompt-len {args.prompt_len} + --generate {args.generate} is more "
                         f"than --seq {cfg.seq}; raise --seq or generate fewer tokens")
    if (rc := distributed.start(args, layout.devices)) is not None:
        return rc
    import numpy as np

    from helix_jax import model as M
    from helix_jax import npz
    from helix_jax.decode import compile_decode, generate, run_decode

    sharded = M.Sharded.build(cfg, layout)
    programs = compile_decode(sharded, args.prompt_len)  # abstract: nothing allocated yet
    checks.check_fits(list(programs[:2]), sharded.mesh, f"decode of {cfg.name} on {layout.spec}",
                      checks.WAY_OUT,
                      host_extra=checks.host_copies(cfg, M.param_shapes(cfg) if args.out else None))
    params = sharded.init(args.seed)
    x_host = M.random_input(cfg, args.seed)
    x = distributed.global_array(np.asarray(x_host).astype(sharded.input_dtype),
                                 sharded.input_sharding)
    run = run_decode(sharded, params, x, args.prompt_len, programs=programs)
    if not distributed.is_main():
        return 0
    steps = cfg.seq - args.prompt_len
    print(f"model    {cfg.name} on {layout.describe()}, batch {cfg.batch}, context {cfg.seq}")
    print(f"prefill  {args.prompt_len} positions: time to first token {run.ttft_s * 1e3:.1f} ms "
          f"(compiled both programs in {run.compile_s:.1f} s before timing)")
    print(f"decode   {steps} steps: per token median {run.median_s * 1e3:.2f} ms, p90 "
          f"{run.p90_s * 1e3:.2f} ms = {cfg.batch / run.median_s:,.0f} tokens/s")
    if not np.isfinite(run.output).all():
        print("warning  the output has non-finite values", file=sys.stderr)
    if args.out:
        npz.save(args.out, cfg, distributed.to_host(params), x_host, run.output)
        print(f"wrote    {args.out}")
    if args.generate:
        prompt = x[:, :args.prompt_len]
        new = generate(sharded, params, prompt, args.generate)
        print(f"generate greedy, first sequence: {np.asarray(x_host)[0, :args.prompt_len].tolist()}"
              f" -> {new[0].tolist()}")
    return 0


def step_sentence(p: dict) -> str:
    """'0.058 s = compute 0.033 s + exposed comm 0.021 s + optimizer 0.004 s (...)': every term
    the step is the sum of (a composed training step prices its optimizer update apart; a whole
    compiled program has it inside compute)."""
    terms = [("compute", p["compute_seconds"]), ("exposed comm", p["exposed_comm_seconds"])]
    if "optimizer_seconds" in p:
        terms.append(("optimizer", p["optimizer_seconds"]))
    text = " + ".join(f"{name} {v:.4g} s" for name, v in terms)  # 4 digits: tiny models too
    rest = p["step_seconds"] - sum(v for _, v in terms)
    if abs(rest) > 1e-9 * max(p["step_seconds"], 1e-12):  # decode: the HBM floor sets the step
        text = f"max({text}, HBM floor {p.get('hbm_floor_seconds', 0.0):.4g} s)"
    return f"{p['step_seconds']:.4g} s = {text} (all comm {p['comm_seconds']:.4g} s)"


def print_projection(r: dict) -> None:
    """A readable table of one projection (what `helix project` prints)."""
    from rich.console import Console
    from rich.table import Table

    from helix_jax.report.fmt import gb

    console = Console(width=None if sys.stdout.isatty() else 110)
    mesh = " x ".join(f"{a}={n}" for a, n in r["mesh"].items())
    console.print(f"[bold]{r['model']}[/] on [bold]{r['layout']}[/] \\[{mesh}], batch {r['batch']} x "
                  f"seq {r['seq']} {r['dtype']}, priced on {r['hardware']}; "
                  f"batch_chunks={r['batch_chunks']}; intra-node axes: "
                  f"{', '.join(r['intra_node_axes']) or 'none'}")
    mode = r.get("mode", "forward")
    console.print(f"compiled: {r.get('compiled', 'the whole program')}")
    for item in r.get("extended_by_formula", []):
        console.print(f"  extended by formula: {item}")
    what = "one stage's microbatch" if r.get("microbatch_size") else f"{mode} step"
    table = Table(title=f"collectives per device per {what} (read from the compiled HLO)")
    for col in ("op", "dtype", "group", "count", "payload/exec", "total", "link", "time"):
        table.add_column(col, justify="left" if col in ("op", "dtype", "link") else "right")
    for c in r["collectives"]:
        table.add_row(c["op"], c["dtype"], str(c["group_size"]), f"{c['count']:,}",
                      f"{c['payload_bytes_per_device'] / 1e6:,.1f} MB",
                      gb(c["payload_bytes_per_device"] * c["count"]), c["link"],
                      f"{c['seconds']:.3f} s")
    console.print(table)
    p, m, comm = r["projected"], r["memory"], r["comm_bytes_per_device"]
    fits = "fits" if r["fits"] else "[red]does NOT fit[/]"
    if "argument_bytes" in m:  # read off the whole compiled program
        memory = (f"args {gb(m['argument_bytes'])} + out {gb(m['output_bytes'])} + temp "
                  f"{gb(m['temp_bytes'])} - alias {gb(m['alias_bytes'])}")
    else:  # composed: by formula
        memory = r["fits_why"].split(": ", 1)[-1]
    console.print(
        f"FLOPs/device  {r['flops_per_device']:.3e} ({r['flops_note']}); model FLOPs/token "
        f"{r['model_flops_per_token']:.3e}\n"
        f"memory/device {gb(r['memory_bytes_per_device'])} ({fits}: {memory})\n"
        f"comm/device   NVLink {gb(comm['nvlink'])}, InfiniBand {gb(comm['ib'])}\n"
        f"step          {step_sentence(p)}\n"
        f"projected     {p['tokens_per_s']:,.0f} tokens/s, MFU {p['mfu']:.1%}, "
        + (f"TPOT {p['tpot_ms']:.3f} ms (one decode step)" if mode == "decode" else
           f"TPOT {p['tpot_ms']:.3f} ms (step / seq)"))
    if "hbm_floor_seconds" in p:
        console.print(f"HBM floor     {p['hbm_floor_seconds'] * 1e3:.3f} ms (weights + KV cache at "
                      f"the profile's HBM bandwidth){': the step is HBM-bound' if p['hbm_bound'] else ''}")
    parts = {k: p[k] for k in ("pipeline_seconds", "bubble_seconds", "tensor_comm_seconds",
                               "pipeline_send_seconds", "data_parallel_exposed_seconds",
                               "optimizer_seconds") if k in p}
    if parts:
        console.print("breakdown     " + ", ".join(f"{k.removesuffix('_seconds')} {v:.3f} s"
                                                   for k, v in parts.items()))
    if not r["fits"] and r.get("fits_why"):
        console.print(f"[red]does not fit[/]: {r['fits_why']}")


def _context_as_seq(args: argparse.Namespace) -> None:
    """`--context` (prefill/decode only; its range is checked with the others) as the length the
    model is built for."""
    if args.context is not None:
        if args.mode not in ("prefill", "decode"):
            raise ValueError("--context applies to --mode prefill or decode")
        args.seq = args.context


def cmd_project(args: argparse.Namespace) -> int:
    _context_as_seq(args)
    cfg, layout = _model_and_layout(args)
    from helix_jax.analysis.costmodel.hardware import load_hardware

    hw = load_hardware(args.hardware)
    checks.output_file(args.json, "--json")
    if args.mode != "train" and args.remat != "none":
        raise ValueError(f"--remat {args.remat} applies to --mode train only")
    from helix_jax.analysis.costmodel.project import check_partitioner as check_step
    from helix_jax.devices import ensure_host_devices

    check_step(cfg, layout, args.mode, "gspmd" if args.partitioner == "both" else args.partitioner)
    from helix_jax.limits import MAX_WHOLE_DEVICES

    ensure_host_devices(min(layout.devices, MAX_WHOLE_DEVICES) if args.mode == "train"
                        else layout.devices)
    import json

    from helix_jax.analysis.costmodel.project import project

    chunks = None if args.batch_chunks == "auto" else int(args.batch_chunks)
    progress = lambda msg: print(f"  {msg}", file=sys.stderr)  # noqa: E731
    if args.partitioner == "both":
        from helix_jax.analysis.partitioners import project_both
        from helix_jax.report.partitioners import print_comparison

        result = project_both(cfg, layout, hw, batch_chunks=chunks, mode=args.mode,
                              remat=args.remat, progress=progress)
        print_comparison(result)
    else:
        result = project(cfg, layout, hw, batch_chunks=chunks, mode=args.mode, remat=args.remat,
                         progress=progress, partitioner=args.partitioner).to_dict()
        print_projection(result)
    if args.json:
        with checks.atomic_output(args.json) as tmp:
            tmp.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg, layout = _model_and_layout(args)
    check_partitioner(layout, args.partitioner)  # before jax starts
    o = layout.options
    if o.get("schedule", "gpipe") != "gpipe" or o.get("virtual", 1) > 1 or o.get("tp_overlap"):
        raise ValueError(f"{layout.spec}: helix train runs the GPipe schedule without overlap; "
                         f"schedule=1f1b, virtual=V and tp_overlap are priced by `helix project "
                         f"--mode train` only")
    checks.output_dir(args.checkpoint_dir, "--checkpoint-dir")
    checks.output_file(args.log, "--log")
    checks.output_dir(args.profile, "--profile")
    if args.resume and not args.checkpoint_dir:
        raise ValueError("--resume needs --checkpoint-dir: the folder to resume from")
    if (rc := distributed.start(args, layout.devices)) is not None:
        return rc  # this process launched --num-processes local processes, which did the work
    from pathlib import Path

    from helix_jax.model import Sharded
    from helix_jax.train import TrainConfig, train

    # the log goes where it was asked, or beside the checkpoints; never into the working folder
    log = args.log or (str(Path(args.checkpoint_dir) / "train_log.jsonl") if args.checkpoint_dir
                       else None)
    main = distributed.is_main()
    sharded = Sharded.build(cfg, layout, partitioner=args.partitioner)
    echo = print if main else (lambda *_: None)
    echo(f"training {cfg.name} on {layout.describe()}{distributed.describe()} for {args.steps} "
         f"steps (batch {cfg.batch} x seq {cfg.seq}); log: {log or 'none (--log FILE keeps one)'}")
    result = train(sharded, TrainConfig(steps=args.steps, lr=args.lr, seed=args.seed),
                   checkpoint_dir=args.checkpoint_dir, save_every=args.save_every,
                   resume=args.resume, log_path=log if main else None,
                   progress=main and not args.no_progress, echo=echo, profile_dir=args.profile)
    if not main:
        return 0
    history = result["history"]
    if history:
        print(f"loss {history[0]['loss']:.4f} -> {history[-1]['loss']:.4f} over steps "
              f"{history[0]['step']}..{history[-1]['step']}")
    else:
        print(f"nothing to do: the checkpoint is already at step {result['start_step']}")
    if args.profile:
        print(f"profile trace in {args.profile} (open with TensorBoard or ui.perfetto.dev)")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from helix_jax.analysis.costmodel.hardware import load_hardware

    load_hardware(args.base)  # a clear error before any measuring
    checks.output_file(args.out, "--out")
    from helix_jax.calibrate import cmd_calibrate as run

    return run(args)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from helix_jax.analysis.costmodel.hardware import load_hardware

    checks.output_dir(args.out, "--out")
    load_hardware(args.hardware)  # a clear error before any work
    from helix_jax.devices import ensure_host_devices

    ensure_host_devices(16)  # the paper's layouts are 16-device meshes
    from helix_jax.report import reproduce

    return reproduce.cmd_reproduce(args)


def cmd_plan(args: argparse.Namespace) -> int:
    _context_as_seq(args)
    from helix_jax.report.planning import run_plan

    return run_plan(args, _config(args), "helix " + " ".join(args.argv))


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, `helix: error: ...`, exit 2 (subcommands inherit it)."""

    def error(self, message: str):
        self.exit(errors.USAGE, f"helix: error: {message} (see `{self.prog} --help`)\n")


_DEBUG_HELP = "on an error, also print the Python traceback"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="helix", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("forward", help="run one forward pass of a model on a layout")
    _model_args(p, "small-dense")
    p.add_argument("--seed", type=int, default=0, help="seed for parameters and input (default 0)")
    p.add_argument("--params", help="load parameters from this npz instead of initialising")
    p.add_argument("--out", help="write params, input and output to this npz")
    p.add_argument("--repeat", type=int, default=3, help="timed runs after the first (default 3)")
    p.add_argument("--profile", help="write a jax profiler trace of the timed runs to this "
                   "directory (TensorBoard, or perfetto_trace.json.gz for ui.perfetto.dev)")
    _partitioner_arg(p)
    distributed.add_args(p)
    p.set_defaults(func=cmd_forward)

    p = sub.add_parser("decode", help="prefill a KV cache placed by the layout, then decode "
                       "position by position; time to first token and per-token latency")
    _model_args(p, "small-dense")
    p.add_argument("--prompt-len", type=int, required=True,
                   help="positions the prefill covers (1 .. seq - 1); the rest are decoded")
    p.add_argument("--seed", type=int, default=0, help="seed for parameters and input (default 0)")
    p.add_argument("--out", help="write params, input and output to this npz (forward's format)")
    p.add_argument("--generate", type=int, help="model files with a vocabulary: also generate "
                   "N tokens greedily from the token prompts")
    distributed.add_args(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("project", help="compile a model at full size on fake devices and read its "
                       "FLOPs, memory and collectives off the program, priced on a hardware profile")
    _model_args(p, "paper-dense")
    p.add_argument("--hardware", default="h100-paper",
                   help="hardware profile name (h100-paper, h100-sxm, dgx-h100, dgx-a100) or a "
                   "JSON/TOML file (e.g. written by `helix calibrate`)")
    p.add_argument("--mode", default="forward", choices=("forward", "train", "prefill", "decode"),
                   help="forward pass (default), a whole training step (forward, backward, "
                   "gradient reduction, AdamW), a prefill of --context positions into a KV cache, "
                   "or one decode step against a cache of --context positions")
    p.add_argument("--context", type=int, help="prefill/decode: the KV cache's length (default: "
                   "the model's seq)")
    p.add_argument("--remat", default="none", choices=("none", "selective", "full"),
                   help="training: recompute nothing, the attention core (selective) or each "
                   "layer's forward (full) in the backward pass")
    p.add_argument("--batch-chunks", default="auto",
                   help="walk the batch in this many chunks (default auto: fewest that fit memory)")
    p.add_argument("--json", help="write the full read-out to this JSON file")
    _partitioner_arg(p, both=True)
    p.set_defaults(func=cmd_project)

    p = sub.add_parser("train", help="train a model on a layout on the synthetic task, with "
                       "checkpoints that resume exactly and across layouts")
    _model_args(p, "tiny-dense")
    p.add_argument("--steps", type=int, default=20, help="total steps to reach (default 20)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed for parameters and data")
    p.add_argument("--checkpoint-dir", help="save checkpoints here (orbax, async, last 3 kept)")
    p.add_argument("--save-every", type=int, default=10,
                   help="save every K steps, and always at the end (default 10)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in --checkpoint-dir")
    p.add_argument("--log", help="JSON-lines log (default: CHECKPOINT_DIR/train_log.jsonl)")
    p.add_argument("--profile", help="write a jax profiler trace of the steps to this directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _partitioner_arg(p)
    distributed.add_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("reproduce", help="the paper's two tables: its claims, our projections "
                       "at full size and small-model runs; writes results/reproduce.{md,json,png}")
    from helix_jax.report.reproduce import add_reproduce_args

    add_reproduce_args(p)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("plan", help="which layout should I use? every legal layout for N "
                       "devices compiled (pruned by cheap bounds first), priced and ranked")
    _model_args(p, "paper-dense", layout=False)
    from helix_jax.report.planning import add_plan_args

    add_plan_args(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("calibrate", help="measure this machine's accelerator (matmul rates, memory "
                       "bandwidth, attention kernels) and write a hardware profile")
    p.add_argument("--out", default="calibrated.json", help="profile file to write (JSON)")
    p.add_argument("--base", default="h100-sxm",
                   help="profile whose links and node shape are copied (default h100-sxm)")
    p.add_argument("--quick", action="store_true", help="small shapes (seconds, for CPUs)")
    p.add_argument("--dtype", choices=DTYPES, help="matmul dtype (default: bfloat16, float32 on CPU)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per measurement")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (median)")
    p.set_defaults(func=cmd_calibrate)

    sub.add_parser("layouts", help="list the layouts").set_defaults(func=cmd_layouts)
    sub.add_parser("models", help="list the model presets").set_defaults(func=cmd_models)
    for command in sub.choices.values():  # --debug also after the subcommand
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help=_DEBUG_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit 0; 2 for a usage error (a flag, value or file that cannot work,
    found before any work); 1 for a failure at run time; one line `helix: error: ...` on stderr
    either way, and the traceback too with --debug."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the launcher re-runs this command
    try:
        checks.check_ranges(args.command, vars(args))
        rc = args.func(args)
    except (Exception, KeyboardInterrupt) as e:
        rc = errors.report(e, debug=args.debug)
    return distributed.finish(rc)


if __name__ == "__main__":
    sys.exit(main())
