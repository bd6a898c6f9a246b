"""Run every notebook top to bottom in a fresh kernel, so that they cannot rot.

Each notebook sets up its own fake CPU devices (16, or 64 for notebook 04) in its first cell
(before importing jax), so the kernel needs nothing from this process. The committed outputs are
cleared first: the plots checked here are the ones this run drew. One budget of 120 s per notebook
(they take 15-30 s on 2 cores).

The kernel runs at a lower CPU priority: under `pytest -n 2` on 2 cores a notebook's many XLA
threads would otherwise starve the test that runs beside it, and the multi-process tests
(tests/test_distributed.py) time out waiting for a starved process.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = ("01_two_level_attention.ipynb", "02_expert_parallelism.ipynb",
             "03_layouts_side_by_side.ipynb", "04_kv_heads_run_out.ipynb")
BUDGET_S = 120
NICE = 10


def lower_priority(pid: int) -> None:
    """Renice every thread of process `pid` (Linux: niceness is per thread; threads that it
    starts later, such as XLA's pools, inherit it from the thread that starts them)."""
    tasks = Path(f"/proc/{pid}/task")
    if not hasattr(os, "setpriority") or not tasks.is_dir():
        return
    for tid in tasks.iterdir():
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid.name), NICE)
        except (ProcessLookupError, PermissionError):
            pass


def outputs(nb, output_type: str | None = None):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if output_type is None or o.output_type == output_type]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, tmp_path):
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    assert outputs(nb, "display_data"), f"{name} is committed without its outputs"
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None

    deadline = time.monotonic() + BUDGET_S  # the whole notebook, not each cell, gets the budget
    client = NotebookClient(nb, kernel_name="python3", timeout=BUDGET_S,
                            timeout_func=lambda _: max(1, int(deadline - time.monotonic())),
                            resources={"metadata": {"path": str(tmp_path)}})
    client.on_notebook_start = lambda **_: lower_priority(client.km.provisioner.pid)
    client.execute()  # raises CellExecutionError, naming the cell, on the first error

    assert not outputs(nb, "error")
    pngs = [o for o in outputs(nb) if "image/png" in o.get("data", {})]
    assert pngs, f"{name} drew no plot"
