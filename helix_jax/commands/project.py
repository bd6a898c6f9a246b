"""`helix project`: compile a model at full size on fake devices (a forward pass, a training step,
a prefill or a decode step), read FLOPs, memory and collectives off the program and price them on
a hardware profile; `--partitioner both` compiles the hand-written and XLA's programs side by
side."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from helix_jax import files
from helix_jax.commands.args import (
    BOTH,
    context_as_seq,
    mode_arg,
    model_and_layout,
    model_args,
    partitioner_arg,
)
from helix_jax.enums import AttentionPricing, Mode, Partitioner, Remat, choices


def add_parser(sub: Any) -> None:
    """`helix project` and its options."""
    p = sub.add_parser("project", help="compile a model at full size on fake devices and read its "
                       "FLOPs, memory and collectives off the program, priced on a hardware profile")
    model_args(p, "paper-dense")
    p.add_argument("--hardware", default="h100-paper",
                   help="hardware profile name (h100-paper, h100-sxm, dgx-h100, dgx-h200, dgx-a100) or a "
                   "JSON/TOML file (e.g. written by `helix calibrate`)")
    mode_arg(p, "forward pass (default), a whole training step (forward, backward, "
             "gradient reduction, AdamW), a prefill of --context positions into a KV cache, "
             "or one decode step against a cache of --context positions")
    p.add_argument("--context", type=int, help="prefill/decode: the KV cache's length (default: "
                   "the model's seq)")
    p.add_argument("--prompt-tokens", type=int, metavar="I",
                   help="decode: price a served request's inter-token latency (itl_ms): I input "
                   "tokens per request, with --output-tokens; the decode batch is the "
                   "concurrency and --context defaults to the mean context I + O/2")
    p.add_argument("--output-tokens", type=int, metavar="O",
                   help="decode: output tokens per served request (with --prompt-tokens); ITL = "
                   "decode step + (batch - 1) / (O - 1) x the prefill of I tokens")
    p.add_argument("--remat", default=Remat.NONE.value, choices=choices(Remat),
                   help="training: recompute nothing, the attention core (selective) or each "
                   "layer's forward (full) in the backward pass")
    p.add_argument("--price-attention", dest="attention_pricing",
                   default=AttentionPricing.FLASH.value,
                   choices=choices(AttentionPricing),
                   help="forward/train: price the attention core as one fused flash kernel "
                   "(default) or as the unfused kernels of runs before flash attention (scores "
                   "written to HBM: e.g. Megatron-LM in 2022)")
    p.add_argument("--composed", action="store_true", default=None,
                   help="train: price a pipeline by one compiled stage and Megatron's schedule "
                   "(what `helix plan` ranks; the default compiles a dp=1 pipeline whole and "
                   "reads it as helix's runtime runs it)")
    p.add_argument("--batch-chunks", default="auto",
                   help="walk the batch in this many chunks (default auto: fewest that fit memory)")
    p.add_argument("--json", help="write the full read-out to this JSON file")
    partitioner_arg(p, both=True)
    p.set_defaults(func=run)


def _print_serving(s: dict) -> None:
    """The served inter-token latency and its two terms."""
    print(f"serving  {s['prompt_tokens']:,} input / {s['output_tokens']:,} output tokens at "
          f"concurrency {s['concurrency']}: ITL {s['itl_ms']:.2f} ms = decode step "
          f"{s['decode_step_ms']:.2f} ms + ({s['concurrency']} - 1) / ({s['output_tokens']} - 1)"
          f" x prefill {s['prefill_ms']:.1f} ms ({s['amortised_prefill_ms']:.2f} ms)")


def _progress(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Check the request before jax starts, give the CPU the devices, project, print, write."""
    from helix_jax.analysis.costmodel.serving import check_serving, mean_context

    check_serving(args.mode, args.prompt_tokens, args.output_tokens)
    serving = args.prompt_tokens is not None
    if serving and args.context is None:
        args.context = mean_context(args.prompt_tokens, args.output_tokens)
    context_as_seq(args)
    cfg, layout = model_and_layout(args, validate=False)  # check_projection checks them
    from helix_jax.analysis.costmodel.hardware import load_hardware

    hw = load_hardware(args.hardware)
    files.output_file(args.json, "--json")
    if args.mode != Mode.TRAIN and args.remat != Remat.NONE:
        raise ValueError(f"--remat {args.remat} applies to --mode train only")
    if args.attention_pricing != AttentionPricing.FLASH and (
            args.mode not in (Mode.FORWARD, Mode.TRAIN) or args.partitioner == BOTH):
        raise ValueError(f"--price-attention {args.attention_pricing} applies to forward and train "
                         f"projections of one partitioner; drop it for --mode {args.mode}"
                         + (" or --partitioner both" if args.partitioner == BOTH else ""))
    from helix_jax.analysis.costmodel.project import check_projection as check_step
    from helix_jax.devices import ensure_host_devices

    check_step(cfg, layout, args.mode,
               Partitioner.GSPMD if args.partitioner == BOTH else args.partitioner, args.weights,
               args.composed)
    if serving:  # the joining requests' prefill: batch 1, I positions, on the same layout
        check_step(cfg.replace(batch=1, seq=args.prompt_tokens), layout, Mode.PREFILL,
                   args.partitioner, args.weights)
    from helix_jax.analysis.planner.cache import use_fast_codegen
    from helix_jax.limits import MAX_WHOLE_DEVICES

    use_fast_codegen()  # compiled only to be read: the cheapest code generation, the same HLO
    ensure_host_devices(min(layout.devices, MAX_WHOLE_DEVICES) if args.mode == Mode.TRAIN
                        else layout.devices)
    import json

    from helix_jax.analysis.costmodel.project import project

    chunks = None if args.batch_chunks == "auto" else int(args.batch_chunks)
    if args.partitioner == BOTH:
        from helix_jax.analysis.partitioners import project_both
        from helix_jax.report.partitioners import print_comparison

        result = project_both(cfg, layout, hw, batch_chunks=chunks, mode=args.mode,
                              remat=args.remat, progress=_progress)
        print_comparison(result)
    else:
        from helix_jax.report.console import print_projection

        projection = project(cfg, layout, hw, batch_chunks=chunks, mode=args.mode,
                             remat=args.remat, progress=_progress, partitioner=args.partitioner,
                             weights=args.weights, attention_pricing=args.attention_pricing,
                             composed=args.composed)
        result = projection.to_dict()
        if serving:
            from helix_jax.analysis.costmodel.serving import serving_itl

            result["serving"] = serving_itl(cfg, layout, hw, projection, args.prompt_tokens,
                                            args.output_tokens, weights=args.weights)
        print_projection(result)
        if serving:
            _print_serving(result["serving"])
    if args.json:
        with files.atomic_output(args.json) as tmp:
            tmp.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0
