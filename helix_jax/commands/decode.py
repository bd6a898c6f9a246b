"""`helix decode`: prefill a KV cache placed by the layout, then decode the rest position by
position; time to first token, per-token latency and, for models with a vocabulary, greedy
generation."""

from __future__ import annotations

import argparse
from typing import Any

from helix_jax import distributed, files, options
from helix_jax.commands.args import hf_weights_checked, model_and_layout, model_args
from helix_jax.config import ModelConfig
from helix_jax.enums import Weights
from helix_jax.layouts import Layout


def add_parser(sub: Any) -> None:
    """`helix decode` and its options."""
    p = sub.add_parser("decode", help="prefill a KV cache placed by the layout, then decode "
                       "position by position; time to first token and per-token latency")
    model_args(p, "small-dense")
    p.add_argument("--prompt-len", type=int, required=True,
                   help="positions the prefill covers (1 .. seq - 1); the rest are decoded")
    p.add_argument("--seed", type=int, default=0, help="seed for parameters and input (default 0)")
    p.add_argument("--out", help="write params, input and output to this npz (forward's format)")
    p.add_argument("--generate", type=int, help="model files with a vocabulary: also generate "
                   "N tokens greedily from the token prompts")
    distributed.add_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the prompt, the output path and --generate before jax starts, then decode."""
    cfg, layout = _check_request(args)
    if (rc := distributed.start(args, layout.devices)) is not None:
        return rc
    return _decode(args, cfg, layout)


def _check_request(args: argparse.Namespace) -> tuple[ModelConfig, Layout]:
    """The model and layout, the prompt, --generate and the output path checked before jax
    starts."""
    cfg, layout = model_and_layout(args)
    options.prompt_len(args.prompt_len, cfg.seq)
    files.output_file(args.out, "--out")
    if args.generate is not None and (args.generate < 1 or not cfg.vocab):
        raise ValueError("--generate N needs N >= 1 and a model file with vocab > 0")
    if args.generate is not None and args.prompt_len + args.generate > cfg.seq:
        raise ValueError(f"--prompt-len {args.prompt_len} + --generate {args.generate} is more "
                         f"than --seq {cfg.seq}; raise --seq or generate fewer tokens")
    hf_weights_checked(args, cfg)
    return cfg, layout


def _decode(args: argparse.Namespace, cfg: ModelConfig, layout: Layout) -> int:
    import numpy as np

    from helix_jax import model as M
    from helix_jax import npz
    from helix_jax.decode import compile_decode, generate, run_decode
    from helix_jax.memory_check import WAY_OUT, check_fits, host_copies
    from helix_jax.nn.float8 import dequantize_params
    from helix_jax.report.console import print_decode, print_generated

    sharded = M.Sharded.build(cfg, layout, weights=args.weights)
    programs = compile_decode(sharded, args.prompt_len)  # abstract: nothing allocated yet
    check_fits(list(programs[:2]), sharded.mesh, f"decode of {cfg.name} on {layout.spec}",
               WAY_OUT, host_extra=host_copies(cfg, M.param_shapes(cfg) if args.out else None))
    params = sharded.load_hf(args.hf) if args.hf else sharded.init(args.seed)
    if args.weights == Weights.FLOAT8:  # quantised once, for the decode and the generation
        params = sharded.serving_params(params)
    x_host = M.random_input(cfg, args.seed)
    x = distributed.global_array(np.asarray(x_host).astype(sharded.input_dtype),
                                 sharded.input_sharding)
    result = run_decode(sharded, params, x, args.prompt_len, programs=programs)
    if not distributed.is_main():
        return 0
    print_decode(cfg, layout, args.prompt_len, result, weights=args.weights)
    if args.out:  # float8: the weights the run computed with, q · scale
        npz.save(args.out, cfg, dequantize_params(distributed.to_host(params)), x_host,
                 result.output)
        print(f"wrote    {args.out}")
    if args.generate:
        gen = generate(sharded, params, x[:, :args.prompt_len], args.generate)
        print_generated(np.asarray(x_host)[0, :args.prompt_len].tolist(), gen)
    return 0
