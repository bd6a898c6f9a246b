"""`helix train`: train a model on a layout on the synthetic task, with checkpoints that resume
exactly (also under another layout) and a log only where asked."""

from __future__ import annotations

import argparse
from typing import Any

from helix_jax import distributed, files
from helix_jax.commands.args import (
    hf_weights_checked,
    model_and_layout,
    model_args,
    partitioner_arg,
)
from helix_jax.config import ModelConfig
from helix_jax.gspmd import check_partitioner
from helix_jax.layouts import Layout, overlap_without_sp


def add_parser(sub: Any) -> None:
    """`helix train` and its options."""
    p = sub.add_parser("train", help="train a model on a layout on the synthetic task, with "
                       "checkpoints that resume exactly and across layouts")
    model_args(p, "tiny-dense")
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
    partitioner_arg(p)
    distributed.add_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Refuse what the runtime cannot run and check every path before jax starts, then train."""
    cfg, layout = _check_request(args)
    if (rc := distributed.start(args, layout.devices)) is not None:
        return rc  # this process launched --num-processes local processes, which did the work
    return _train(args, cfg, layout)


def _check_request(args: argparse.Namespace) -> tuple[ModelConfig, Layout]:
    """The model and layout, what the runtime can run of it, and every path, checked before jax
    starts."""
    cfg, layout = model_and_layout(args)
    check_partitioner(layout, args.partitioner)  # before jax starts
    if overlap_without_sp(layout):
        raise ValueError(f"{layout.spec}: tp_overlap=true runs sequence parallelism's "
                         f"collectives as collective matmuls; add sp=true")
    files.output_dir(args.checkpoint_dir, "--checkpoint-dir")
    files.output_file(args.log, "--log")
    files.output_dir(args.profile, "--profile")
    if args.resume and not args.checkpoint_dir:
        raise ValueError("--resume needs --checkpoint-dir: the folder to resume from")
    hf_weights_checked(args, cfg)
    return cfg, layout


def _train(args: argparse.Namespace, cfg: ModelConfig, layout: Layout) -> int:
    from pathlib import Path

    from helix_jax.model import Sharded
    from helix_jax.report.console import print_training, training_header
    from helix_jax.train import TrainConfig, train

    # the log goes where it was asked, or beside the checkpoints; never into the working folder
    log = args.log or (str(Path(args.checkpoint_dir) / "train_log.jsonl") if args.checkpoint_dir
                       else None)
    main = distributed.is_main()
    sharded = Sharded.build(cfg, layout, partitioner=args.partitioner)
    echo = print if main else (lambda *_: None)
    echo(training_header(cfg, layout, distributed.describe(), args.steps, log))
    result = train(sharded, TrainConfig(steps=args.steps, lr=args.lr, seed=args.seed,
                                        hf=args.hf),
                   checkpoint_dir=args.checkpoint_dir, save_every=args.save_every,
                   resume=args.resume, log_path=log if main else None,
                   progress=main and not args.no_progress, echo=echo, profile_dir=args.profile)
    if main:
        print_training(result, args.profile)
    return 0
