"""`helix forward`: one forward pass of a model on a layout, timed after the compiling first call;
the parameters, input and output written to an npz (forward's exchange format) when asked."""

from __future__ import annotations

import argparse
import time
from typing import Any

from helix_jax import distributed, files
from helix_jax.commands.args import (
    hf_weights_checked,
    model_and_layout,
    model_args,
    partitioner_arg,
)
from helix_jax.config import ModelConfig
from helix_jax.enums import Weights
from helix_jax.gspmd import check_partitioner
from helix_jax.layouts import Layout


def add_parser(sub: Any) -> None:
    """`helix forward` and its options."""
    p = sub.add_parser("forward", help="run one forward pass of a model on a layout")
    model_args(p, "small-dense")
    p.add_argument("--seed", type=int, default=0, help="seed for parameters and input (default 0)")
    p.add_argument("--params", help="load parameters from this npz instead of initialising")
    p.add_argument("--out", help="write params, input and output to this npz")
    p.add_argument("--repeat", type=int, default=3, help="timed runs after the first (default 3)")
    p.add_argument("--profile", help="write a jax profiler trace of the timed runs to this "
                   "directory (TensorBoard, or perfetto_trace.json.gz for ui.perfetto.dev)")
    partitioner_arg(p)
    distributed.add_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check every input before jax starts, then compile, check the host can hold the run, run
    and time it, print and write."""
    cfg, layout, arrays = _check_request(args)
    if (rc := distributed.start(args, layout.devices)) is not None:
        return rc  # this process launched --num-processes local processes, which did the work
    return _forward(args, cfg, layout, arrays)


def _check_request(args: argparse.Namespace) -> tuple[ModelConfig, Layout, dict | None]:
    """The model, the layout and the `--params` arrays, every input and output path checked
    before jax starts."""
    cfg, layout = model_and_layout(args)
    check_partitioner(layout, args.partitioner)
    files.output_file(args.out, "--out")
    files.output_dir(args.profile, "--profile")
    arrays = None
    if args.params and args.hf:
        raise ValueError("--params and --hf both give the weights; give one")
    if args.params:  # a bad file fails here
        from helix_jax import npz

        arrays, _ = npz.load(args.params)
    hf_weights_checked(args, cfg)
    return cfg, layout, arrays


def _forward(args: argparse.Namespace, cfg: ModelConfig, layout: Layout, arrays: dict | None) -> int:
    import jax
    import numpy as np

    from helix_jax import model as M
    from helix_jax import npz
    from helix_jax.memory_check import WAY_OUT, check_fits, host_copies
    from helix_jax.nn.float8 import dequantize_params
    from helix_jax.report.console import print_forward

    sharded = M.Sharded.build(cfg, layout, partitioner=args.partitioner, weights=args.weights)
    if arrays is not None:
        host_params = npz.flat_to_params(arrays, M.param_shapes(cfg), f"--params {args.params}")
    start = time.perf_counter()  # compiled for abstract arguments: nothing allocated yet
    forward = sharded.forward_fn().lower(*sharded.abstract_inputs()).compile()
    compile_s = time.perf_counter() - start
    check_fits([forward], sharded.mesh, f"forward of {cfg.name} on {layout.spec}", WAY_OUT,
               host_extra=host_copies(cfg, M.param_shapes(cfg) if args.out else None))
    params = (sharded.place(host_params) if arrays is not None
              else sharded.load_hf(args.hf) if args.hf else sharded.init(args.seed))
    if args.weights == Weights.FLOAT8:  # the forward reads the stored float8 weights
        params = sharded.serving_params(params)
    x_host = M.random_input(cfg, args.seed)  # the same on every process
    x = distributed.global_array(np.asarray(x_host).astype(sharded.input_dtype),
                                 sharded.input_sharding)
    distributed.barrier("forward compiled")  # run the first collective only once all compiled
    (y, stats), first_s, times = _timed(forward, params, x, args.repeat, args.profile)
    y, stats = distributed.to_host((y, stats))
    y = y.astype(np.float32)
    host_params = dequantize_params(distributed.to_host(params)) if args.out else None
    if not distributed.is_main():
        return 0  # process 0 prints and writes
    print_forward(cfg, layout, partitioner=args.partitioner, platform=jax.devices()[0].platform,
                  hosts=distributed.describe(), input_shape=tuple(x.shape), output=y, stats=stats,
                  first_s=compile_s + first_s, times=times, weights=args.weights)
    if args.out:
        npz.save(args.out, cfg, host_params, x_host, y)
        print(f"wrote    {args.out}")
    if args.profile:
        print(f"trace    {args.profile}")
    return 0


def _timed(forward: Any, params: Any, x: Any, repeat: int,
           profile: str | None) -> tuple[Any, float, list[float]]:
    """The first call's result and seconds, then the seconds of `repeat` timed runs (at least
    one under `profile`, traced into that folder)."""
    import contextlib

    import jax

    start = time.perf_counter()
    out = jax.block_until_ready(forward(params, x))
    first_s = time.perf_counter() - start
    times = []
    tracing = (jax.profiler.trace(profile, create_perfetto_trace=True) if profile
               else contextlib.nullcontext())
    with tracing:  # the timed runs, after the compiling first call
        for _ in range(max(repeat, 1 if profile else 0)):
            start = time.perf_counter()
            jax.block_until_ready(forward(params, x))
            times.append(time.perf_counter() - start)
    return out, first_s, times
