"""Paths checked before any work, and files written whole: an output file or folder can be
written, an input file exists and is readable, and an output replaces its old version in one
rename. Each check raises ValueError with one message naming the flag, the path and what is
wrong (the CLI prints it as `helix: error: ...`, exit 2). No jax here."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def output_file(path: str | os.PathLike | None, flag: str) -> None:
    """`path` can be written as a file: its folder exists and is writable, it is not a folder."""
    if not path:
        return
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file name inside it, e.g. "
                         f"{p / 'out'}")
    parent = p.resolve().parent
    if not parent.exists():
        raise ValueError(f"{flag} {path}: folder {parent} does not exist; create it first or "
                         f"choose another path")
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: {parent} is a file, not a folder")
    if not _writable(parent):
        raise ValueError(f"{flag} {path}: folder {parent} is not writable")
    if p.exists() and not os.access(p, os.W_OK):
        raise ValueError(f"{flag} {path} exists and is not writable")


def output_dir(path: str | os.PathLike | None, flag: str) -> None:
    """`path` can hold output files: an existing writable folder, or a new one whose nearest
    existing parent is a writable folder (it is created with its parents when written)."""
    if not path:
        return
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ValueError(f"{flag} {path} exists and is not a folder; give a folder")
        if not _writable(p):
            raise ValueError(f"{flag} {path}: folder is not writable")
        return
    above = p.resolve().parent
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        raise ValueError(f"{flag} {path}: {above} is a file, not a folder")
    if not _writable(above):
        raise ValueError(f"{flag} {path}: cannot create it, folder {above} is not writable")


def input_file(path: str | os.PathLike, flag: str, what: str) -> Path:
    """`path` is an existing, readable file (`what` names its kind in the message)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"{flag} {path}: no such file")
    if p.is_dir():
        raise ValueError(f"{flag} {path} is a folder, not {what}")
    if not os.access(p, os.R_OK):
        raise ValueError(f"{flag} {path}: not readable (permission denied)")
    return p


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file beside `path`; once the block succeeds it replaces `path` in one
    rename, so an existing file is never left half-written (and is kept if the block fails)."""
    target = Path(path).expanduser()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                               dir=target.resolve().parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, target.stat().st_mode & 0o7777 if target.exists() else 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
