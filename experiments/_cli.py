"""The command line the study scripts share: `--out FOLDER` (which must exist), `--no-progress`,
and whatever a script adds."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def parse_args(name: str, doc: str, argv: list[str] | None,
               add: Callable[[argparse.ArgumentParser], None] | None = None
               ) -> tuple[argparse.Namespace, Path]:
    """Parse the script's arguments (`add` adds its own); a one-line exit when --out is not an
    existing folder."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", default="results", help="output folder (default: results)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    if add:
        add(parser)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if not out.is_dir():
        raise SystemExit(f"{name}: output folder {out} does not exist; create it")
    return args, out
