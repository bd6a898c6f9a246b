"""Orbax checkpoints that survive a crash mid-save, restore into any layout, and prove their bytes.

Orbax writes each step into a temporary directory and renames it only once every file is on disk,
so a process killed during a save leaves that step incomplete and invisible: `latest_step` returns
the newest complete one. A restore target carries the *current* layout's shardings, so a
checkpoint saved under one layout is resharded on the way into another.

Each save records, in the step's JSON metadata (written in the same orbax step, so committed
atomically with the arrays), the sha256 of every leaf's bytes keyed by its tree path, and a sha256
of the metadata itself. A restore recomputes them: a single flipped bit in the step's array data
(which tensorstore may read back without complaint) or in the metadata is caught. `restore_newest`
walks back from a corrupt step to the newest intact one and moves the corrupt ones aside.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from helix_jax.errors import RunError

CORRUPT_SUFFIX = ".corrupt"


class CheckpointError(RunError):
    """A checkpoint step that cannot be restored; the message names the step and the problem."""

    def __init__(self, directory: Path, step: int, reason: str):
        super().__init__(f"checkpoint step {step} in {directory}: {reason}")
        self.step, self.reason = step, reason


def _short(exc: BaseException, limit: int = 160) -> str:
    """The gist of an orbax/tensorstore error: the first line of the innermost error it chains
    to (tensorstore's own, e.g. which array and what failed), without the long specs."""
    while (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    text = re.sub(r' in OCDBT database at local file "[^"]*"', "", text)
    for cut in (" See full TensorStore details", " [tensorstore_spec", " [source locations"):
        text = text.split(cut)[0]
    return (text[:limit] + "...") if len(text) > limit else text


def state_checksums(state: Any) -> dict[str, str]:
    """sha256 of each leaf's bytes (gathered from every process), keyed by its tree path."""
    import jax
    import numpy as np

    from helix_jax import distributed

    host = distributed.to_host(state)
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(host):
        a = np.ascontiguousarray(leaf)
        digest = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
        out[jax.tree_util.keystr(path)] = digest.hexdigest()
    return out


def _meta_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class _QuietOrbaxFailures(logging.Filter):
    """Drops what a failed tensorstore read leaves behind after orbax has raised: asyncio's
    "exception was never retrieved" records for the other reads in flight."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "never retrieved" not in record.getMessage()


def _is_read_debris(exc: BaseException | None) -> bool:
    text = str(exc)
    return ("Event loop is closed" in text or "Encountered error while reading" in text
            or "DATA_LOSS" in text)


_QUIET = {"installed": False}


def _silence_read_debris() -> None:
    """When a restore fails, tensorstore's remaining reads complete on a closed event loop and
    print tracebacks of no use to anyone (from other threads, even after the restore returned).
    Installed before every restore, this keeps exactly those out of the user's terminal; every
    other error still shows."""
    if _QUIET["installed"]:
        return
    _QUIET["installed"] = True
    logging.getLogger("asyncio").addFilter(_QuietOrbaxFailures())
    previous_unraisable, previous_except = sys.unraisablehook, sys.excepthook

    def unraisable(u):
        if not _is_read_debris(u.exc_value):
            previous_unraisable(u)

    def excepthook(kind, value, tb):
        if not _is_read_debris(value):
            previous_except(kind, value, tb)

    sys.unraisablehook, sys.excepthook = unraisable, excepthook


class Checkpoints:
    """A directory of numbered training checkpoints: state pytree + JSON metadata per step."""

    def __init__(self, directory: str | Path, max_to_keep: int = 3):
        self.directory = Path(directory).expanduser().resolve()  # orbax needs absolute paths
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint (an interrupted save is never listed)."""
        return self._manager.latest_step()

    def steps(self) -> list[int]:
        """Every complete step, newest first."""
        return sorted(self._manager.all_steps(), reverse=True)

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Start an asynchronous save of `state` with `meta` plus the checksums of `state`'s
        leaves and of the metadata; training goes on while it is written."""
        meta = {**meta, "checksums": state_checksums(state)}
        meta["meta_sha256"] = _meta_digest(meta)
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

    def read_meta(self, step: int) -> dict:
        """The step's metadata, verified against its own checksum (CheckpointError if not)."""
        _silence_read_debris()
        try:
            meta = self._manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore())).meta
        except Exception as e:
            raise CheckpointError(self.directory, step,
                                  f"its metadata cannot be read ({_short(e)})") from e
        if not isinstance(meta, dict):
            raise CheckpointError(self.directory, step, "its metadata is not a JSON object")
        if "meta_sha256" in meta and meta["meta_sha256"] != _meta_digest(meta):
            raise CheckpointError(self.directory, step, "its metadata does not match its "
                                  "checksum (a changed byte)")
        return meta

    def restore(self, step: int, target: Any, meta: dict | None = None) -> tuple[Any, dict]:
        """State restored into `target`'s shapes and shardings, and the metadata; every leaf
        checked against the checksums saved with it (CheckpointError naming the first that
        differs, or what orbax could not read)."""
        meta = meta if meta is not None else self.read_meta(step)
        _silence_read_debris()
        try:
            state = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target))).state
        except Exception as e:
            raise CheckpointError(self.directory, step,
                                  f"its arrays cannot be read ({_short(e)})") from e
        saved = meta.get("checksums")
        if saved is not None:
            got = state_checksums(state)
            bad = sorted(k for k in set(saved) | set(got) if saved.get(k) != got.get(k))
            if bad:
                raise CheckpointError(self.directory, step,
                                      f"{len(bad)} array(s) differ from what was saved (sha256 "
                                      f"mismatch), e.g. {bad[0]}")
        return state, meta

    def restore_newest(self, target: Any, check_meta: Callable[[dict], None] = lambda m: None,
                       warn: Callable[[str], None] = print):
        """(step, state, meta) of the newest step that restores and verifies, or None when the
        directory holds no complete step. Corrupt steps newer than it are reported with `warn`
        and moved aside (renamed to STEP.corrupt) so that training can save those steps again.
        `check_meta` may refuse a step's metadata (a ValueError, e.g. another model): that is
        not corruption and ends the search. Every step corrupt: a RunError (a failure, exit 1),
        and nothing is moved."""
        steps = self.steps()
        if not steps:
            return None
        corrupt: list[tuple[int, CheckpointError]] = []
        for step in steps:
            try:
                meta = self.read_meta(step)
                check_meta(meta)
                state, meta = self.restore(step, target, meta)
            except CheckpointError as e:
                corrupt.append((step, e))
                warn(f"{e}; trying an older step")
                continue
            if "checksums" not in meta:
                warn(f"checkpoint step {step} in {self.directory} has no checksums (saved by an "
                     f"older helix): restored without verifying its bytes")
            for bad, _ in corrupt:
                moved = self._move_aside(bad)
                warn(f"skipped corrupt step {bad}: moved it aside to {moved}; resuming from "
                     f"step {step}")
            if corrupt:
                self._manager.reload()
            return step, state, meta
        reasons = "; ".join(f"step {e.step}: {e.reason[:70]}" for _, e in corrupt)
        raise RunError(f"every checkpoint in {self.directory} is corrupt and nothing was changed; "
                       f"restore a backup, or move the folder away to start from scratch "
                       f"({reasons})")

    def _move_aside(self, step: int) -> Path:
        """Rename step `step`'s directory to STEP.corrupt (STEP.corrupt.N if taken), on process
        0, once every process has restored what it needs."""
        from helix_jax import distributed

        source = self.directory / str(step)
        target = self.directory / f"{step}{CORRUPT_SUFFIX}"
        n = 1
        while target.exists():
            target = self.directory / f"{step}{CORRUPT_SUFFIX}.{n}"
            n += 1
        distributed.barrier(f"checkpoint {step} checked")
        if distributed.is_main():
            with contextlib.suppress(FileNotFoundError):
                source.rename(target)
        distributed.barrier(f"checkpoint {step} moved aside")
        return target

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
