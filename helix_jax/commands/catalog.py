"""`helix layouts` and `helix models`: what a user can pick from."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    """`helix layouts` and `helix models` (no options)."""
    sub.add_parser("layouts", help="list the layouts").set_defaults(func=run)
    sub.add_parser("models", help="list the model presets").set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the list the command names."""
    from helix_jax.report.console import print_layouts, print_models

    {"layouts": print_layouts, "models": print_models}[args.command]()
    return 0
