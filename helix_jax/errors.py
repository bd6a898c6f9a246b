"""How a `helix` command ends when something goes wrong: one line on stderr and an exit code.

Exit 2: a usage error, something the user gave (a flag, a value, a file) that cannot work; it is
found before any work starts. Exit 1: a failure at run time (every checkpoint corrupt, a runtime
error inside jax or orbax, anything unexpected). `--debug` adds the traceback. No module here
imports jax, so the CLI can report bad flags before jax starts.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

USAGE, FAILURE, INTERRUPTED = 2, 1, 130
_PACKAGE = str(Path(__file__).resolve().parent)
_MAX_CHARS = 300


def quote(value: object, limit: int = 40) -> str:
    """A value the user gave, quoted for a message: at most `limit` characters of it."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return repr(text[:limit]) + f"... ({len(text):,} characters)"


def unknown_name(what: str, name: object, known) -> str:
    """'unknown layout 'tp_pp' (did you mean 'tp-pp'?)': the bad name, quoted short, and the
    closest known one; never the whole list (the help or `helix layouts` has it)."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f"unknown {what} {quote(name)}" + (f" (did you mean {close[0]!r}?)" if close else "")


class RunError(RuntimeError):
    """A failure at run time that the project foresaw; its message names the problem (exit 1)."""


def _raised_here(exc: BaseException) -> bool:
    """Whether `exc` was raised by helix_jax's own code (its innermost frame is in the package),
    not deep inside jax, orbax or numpy."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and str(Path(frames[-1].filename).resolve()).startswith(_PACKAGE)


def _one_line(text: str, first_only: bool) -> str:
    """A message as one line: its lines joined with '; ' (or only the first, for the long
    multi-line messages of jax and tensorstore), cut to a readable length."""
    lines = [" ".join(line.split()) for line in str(text).splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[0] if first_only else "; ".join(lines).replace(":;", ":")
    return line if len(line) <= _MAX_CHARS else line[:_MAX_CHARS - 3] + "..."


def classify(exc: BaseException) -> tuple[int, str]:
    """(exit code, the one-line message) for an exception that ended a command."""
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED, "interrupted"
    if isinstance(exc, RunError):
        return FAILURE, _one_line(exc, first_only=False)
    if isinstance(exc, ValueError) and _raised_here(exc):
        return USAGE, _one_line(exc, first_only=False)
    hint = " (run with --debug for the traceback)"
    if isinstance(exc, MemoryError):
        return FAILURE, ("ran out of host memory; try a smaller --batch/--seq or model, or price "
                         "the run without running it: helix project" + hint)
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return FAILURE, f"{exc.strerror}{where}{hint}"
    message = _one_line(exc, first_only=True)
    return FAILURE, f"{type(exc).__name__}{': ' + message if message else ''}{hint}"


def report(exc: BaseException, debug: bool = False) -> int:
    """Print `exc` as `helix: error: ...` (after its traceback with `debug`); its exit code."""
    rc, message = classify(exc)
    if debug:
        traceback.print_exception(exc)
    sys.stdout.flush()
    print(f"helix: error: {message}", file=sys.stderr)
    return rc


def warn(message: str) -> None:
    """A warning the user should see, on stderr, one line."""
    print(f"helix: warning: {_one_line(message, first_only=False)}", file=sys.stderr, flush=True)
