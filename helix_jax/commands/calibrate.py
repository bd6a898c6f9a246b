"""`helix calibrate`: measure this machine's accelerator and write a hardware profile."""

from __future__ import annotations

import argparse
from typing import Any

from helix_jax import files
from helix_jax.config import DTYPES


def add_parser(sub: Any) -> None:
    """`helix calibrate` and its options."""
    p = sub.add_parser("calibrate", help="measure this machine's accelerator (matmul rates, memory "
                       "bandwidth, attention kernels) and write a hardware profile")
    p.add_argument("--out", default="calibrated.json", help="profile file to write (JSON)")
    p.add_argument("--base", default="h100-sxm",
                   help="profile whose links and node shape are copied (default h100-sxm)")
    p.add_argument("--quick", action="store_true", help="small shapes (seconds, for CPUs)")
    p.add_argument("--dtype", choices=DTYPES, help="matmul dtype (default: bfloat16, float32 on CPU)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per measurement")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (median)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the base profile and the output path before measuring anything, then measure."""
    from helix_jax.analysis.costmodel.hardware import load_hardware

    load_hardware(args.base)  # a clear error before any measuring
    files.output_file(args.out, "--out")
    from helix_jax.calibrate import cmd_calibrate

    return cmd_calibrate(args)
