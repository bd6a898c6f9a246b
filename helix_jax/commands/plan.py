"""`helix plan`: which layout should I use? Every legal layout for N devices, pruned by lower
bounds, compiled, priced and ranked (`analysis.planner.search`), then printed, written as JSON and
drawn as a Pareto chart (`report.planning`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from helix_jax import files
from helix_jax.commands.args import config, context_as_seq, mode_arg, model_args
from helix_jax.config import ModelConfig
from helix_jax.enums import Mode, Partitioner

GSPMD_CANDIDATES = {"auto": None, Partitioner.SHARD_MAP.value: False, "both": True}


def add_parser(sub: Any) -> None:
    """`helix plan` and its options."""
    p = sub.add_parser("plan", help="which layout should I use? every legal layout for N "
                       "devices compiled (pruned by cheap bounds first), priced and ranked")
    model_args(p, "paper-dense", layout=False, weights=False)
    add_plan_args(p)
    p.set_defaults(func=run)


def add_plan_args(p: argparse.ArgumentParser) -> None:
    """`helix plan`'s options besides the model's (which `model_args` adds)."""
    p.add_argument("--hardware", default="h100-paper",
                   help="hardware profile name or file (default h100-paper)")
    p.add_argument("--devices", type=int, default=16, help="GPUs to plan for (default 16)")
    mode_arg(p, "what one step is (default forward)")
    p.add_argument("--context", type=int, help="prefill/decode: the KV cache's length")
    p.add_argument("--top", type=int, default=10, help="rows of the ranked table (default 10)")
    p.add_argument("--explain", action="append", default=[], metavar="LAYOUT",
                   help="say why this layout (spec[@remat][@gspmd]) is where it is; repeatable")
    p.add_argument("--kinds", help="only these layout kinds, comma-separated (default: all)")
    p.add_argument("--no-prune", dest="prune", action="store_false",
                   help="project every legal candidate (no bounds-based pruning)")
    p.add_argument("--max-micro", type=int, default=4,
                   help="training steps composed from one pipeline stage: microbatches of at "
                   "most this many sequences (default 4; 0: every divisor of the batch)")
    p.add_argument("--max-tp", type=int, default=0,
                   help="tp-pp: tensor parallelism over at most this many GPUs (default 0: any)")
    p.add_argument("--partitioners", default="auto", choices=tuple(GSPMD_CANDIDATES),
                   help="candidates under XLA's gspmd partitioner beside the hand-written ones: "
                   "auto (default) in forward passes only, or never, or in every mode")
    p.add_argument("--all-remat", action="store_true",
                   help="training: also project recompute policies a layout does not need to "
                   "fit (by default a layout that fits with less recompute is not tried with more)")
    p.add_argument("--jobs", type=int, default=2,
                   help="projections compiled at once (default 2)")
    p.add_argument("--cache-dir", help="compiled programs and projections are kept here "
                   "(default $HELIX_PLAN_CACHE or ~/.cache/helix_jax/plan)")
    p.add_argument("--no-cache", action="store_true", help="keep nothing on disk")
    p.add_argument("--json", help="write the whole plan to this JSON file")
    p.add_argument("--chart", help="write the Pareto chart here (default: next to --json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """`helix plan`: the model the options name, planned; the command line goes into the JSON."""
    context_as_seq(args)
    return run_plan(args, config(args), "helix " + " ".join(args.argv))


def _checked_kinds(text: str | None) -> tuple[str, ...] | None:
    """`--kinds a,b` as a tuple of known layout kinds (None: all)."""
    if not text:
        return None
    from helix_jax.layouts import LAYOUTS

    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in LAYOUTS]
    if unknown or not kinds:
        raise ValueError(f"--kinds {text!r}: unknown kind(s) {unknown}; choose from "
                         f"{', '.join(LAYOUTS)}")
    return kinds


def _host_devices(args: argparse.Namespace, cfg: ModelConfig) -> None:
    """Refuse a whole-program plan over more fake devices than can be made, else make them (a
    training step of more devices is composed from one stage on at most `heads` devices)."""
    from helix_jax.devices import ensure_host_devices
    from helix_jax.limits import MAX_DEVICES, MAX_HOST_DEVICES, MAX_WHOLE_DEVICES

    train = args.mode == Mode.TRAIN
    if not train and args.devices > MAX_HOST_DEVICES:
        raise ValueError(f"--devices {args.devices:,}: a {args.mode} plan compiles every layout on "
                         f"that many fake CPU devices, at most {MAX_HOST_DEVICES} here; --mode "
                         f"train plans up to {MAX_DEVICES:,} (steps composed from one stage)")
    ensure_host_devices(min(args.devices, max(MAX_WHOLE_DEVICES, cfg.n_heads)) if train
                        else args.devices)


def run_plan(args: argparse.Namespace, cfg: ModelConfig, command: str) -> int:
    """`helix plan` once the model is read: check every input, search, print, write."""
    import json

    from helix_jax.analysis.costmodel.hardware import load_hardware
    from helix_jax.analysis.planner.search import checked_target, paper_anchors
    from helix_jax.analysis.planner.search import plan as search
    from helix_jax.report.planning import pareto_chart, plan_report, print_plan

    hw = load_hardware(args.hardware)  # option ranges: options.RANGES, before this runs
    kinds = _checked_kinds(args.kinds)
    files.output_file(args.json, "--json")
    files.output_file(args.chart, "--chart")
    for text in args.explain:  # read before any work: a typo is an error, not a wasted run
        checked_target(text, cfg, args.devices, args.mode)
    from helix_jax.analysis.planner.cache import ProgramCache, default_dir, use_fast_codegen

    use_fast_codegen()
    _host_devices(args, cfg)
    cache = ProgramCache(None if args.no_cache else (args.cache_dir or default_dir()))
    anchors = paper_anchors(cfg) if args.devices == 16 else ()
    result = search(cfg, hw, args.devices, args.mode, kinds=kinds, prune=args.prune,
                    cache=cache, anchors=anchors, explain=tuple(args.explain),
                    progress=not args.no_progress, jobs=args.jobs, max_micro=args.max_micro,
                    all_remat=args.all_remat, max_tp=args.max_tp,
                    gspmd=GSPMD_CANDIDATES[args.partitioners])
    print_plan(result, args.top)
    chart = args.chart or (str(Path(args.json).with_suffix(".png")) if args.json else None)
    if args.json:
        with files.atomic_output(args.json) as tmp:
            tmp.write_text(json.dumps(plan_report(result, command), indent=1) + "\n")
        print(f"wrote {args.json}")
    if chart:
        pareto_chart(result, chart)
        print(f"wrote {chart}")
    return 0
