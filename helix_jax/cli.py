"""The `helix` command: run, list and (later) analyse the layouts.

jax is imported only after the arguments are read, so the CLI can first give the CPU backend as
many host devices as the layout needs: every command works on a laptop.
"""

from __future__ import annotations

import argparse
import sys
import time

from helix_jax.config import DTYPES, PRESETS, resolve_model
from helix_jax.layouts import LAYOUTS, parse_layout


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="small-dense", choices=sorted(PRESETS),
                   help="model preset (default: small-dense)")
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


def _config(args: argparse.Namespace):
    return resolve_model(args.model, batch=args.batch, seq=args.seq, dtype=args.dtype,
                         causal=args.causal, q_block=args.q_block, kv_block=args.kv_block,
                         top_k=args.top_k, capacity_factor=args.capacity_factor,
                         normalize_top_k=args.normalize_top_k)


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
    cfg = _config(args)
    layout = parse_layout(args.layout)
    layout.validate(cfg)
    from helix_jax.devices import ensure_host_devices

    ensure_host_devices(layout.devices)

    import jax
    import numpy as np

    from helix_jax import model as M
    from helix_jax import npz

    sharded = M.Sharded.build(cfg, layout)
    if args.params:
        arrays, _ = npz.load(args.params)
        params = sharded.place(npz.flat_to_params(arrays, M.param_shapes(cfg), args.params))
    else:
        params = sharded.init(args.seed)
    x = M.random_input(cfg, args.seed)
    forward = sharded.forward_fn()
    start = time.perf_counter()
    y, stats = jax.block_until_ready(forward(params, x))
    first = time.perf_counter() - start
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        jax.block_until_ready(forward(params, x))
        times.append(time.perf_counter() - start)
    y = np.asarray(y, dtype=np.float32)

    mesh = " x ".join(f"{a}={n}" for a, n in layout.axis_sizes.items())
    print(f"model    {cfg.name}: {cfg.n_layers} layers, {cfg.n_heads}x{cfg.head_dim} heads, "
          f"D {cfg.d_model}, F {cfg.d_ff}" + (f", {cfg.n_experts} experts top-{cfg.top_k}"
                                              if cfg.is_moe else "") + f", {cfg.dtype}")
    print(f"layout   {layout.spec}")
    print(f"mesh     {mesh} on {layout.devices} {jax.devices()[0].platform} device(s)")
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
        npz.save(args.out, cfg, jax.device_get(params), x, y)
        print(f"wrote    {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helix", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("forward", help="run one forward pass of a model on a layout")
    _model_args(p)
    p.add_argument("--layout", default="helix", help="layout spec, e.g. helix:m=4,n=4,core=seq_a2a "
                   "(default: helix; `helix layouts` lists them)")
    p.add_argument("--seed", type=int, default=0, help="seed for parameters and input (default 0)")
    p.add_argument("--params", help="load parameters from this npz instead of initialising")
    p.add_argument("--out", help="write params, input and output to this npz")
    p.add_argument("--repeat", type=int, default=3, help="timed runs after the first (default 3)")
    p.set_defaults(func=cmd_forward)

    sub.add_parser("layouts", help="list the layouts").set_defaults(func=cmd_layouts)
    sub.add_parser("models", help="list the model presets").set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        print(f"helix: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
