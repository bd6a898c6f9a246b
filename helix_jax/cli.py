"""The `helix` command: run, decode, train, project and reproduce the layouts.

jax is imported only after the arguments are read, so the CLI can first give the CPU backend as
many host devices as the layout needs: every command works on a laptop.

This module is only the entry point: it builds the parser from the subcommand modules
(`helix_jax.commands`, one per subcommand), checks the option ranges, dispatches, and turns any
error into one line `helix: error: ...` with exit code 2 (usage) or 1 (run time).
"""

from __future__ import annotations

import argparse
import sys

from helix_jax import distributed, errors
from helix_jax.commands import calibrate, catalog, decode, forward, plan, project, reproduce, train
from helix_jax.options import check_ranges

# in the order `helix --help` lists them
COMMANDS = (forward, decode, project, train, reproduce, plan, calibrate, catalog)
_DEBUG_HELP = "on an error, also print the Python traceback"


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, `helix: error: ...`, exit 2 (subcommands inherit it)."""

    def error(self, message: str):
        self.exit(errors.USAGE, f"helix: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """`helix` and every subcommand, each taking --debug before or after its name."""
    parser = _Parser(prog="helix", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
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
        check_ranges(args.command, vars(args))
        rc = args.func(args)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 (every error ends as one line)
        rc = errors.report(e, debug=args.debug)
    return distributed.finish(rc)


if __name__ == "__main__":
    sys.exit(main())
