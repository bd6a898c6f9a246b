"""Orbax checkpoints that survive a crash mid-save and restore into any layout.

Orbax writes each step into a temporary directory and renames it only once every file is on disk,
so a process killed during a save leaves that step incomplete and invisible: `latest_step` returns
the newest complete one. A restore target carries the *current* layout's shardings, so a
checkpoint saved under one layout is resharded on the way into another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp


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

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Start an asynchronous save; training goes on while it is written."""
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

    def read_meta(self, step: int) -> dict:
        return self._manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore())).meta

    def restore(self, step: int, target: Any) -> tuple[Any, dict]:
        """State restored into `target`'s shapes and shardings, and the metadata."""
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
