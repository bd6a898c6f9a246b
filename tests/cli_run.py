"""Run the `helix` command as a test needs it: in this process (what `python -m helix_jax.cli`
runs, `cli.main`, with its output and exit code captured), or in a fresh process.

In this process a command pays no interpreter and jax start-up (about 2 s each on the CI's
cores) and shares the test worker's compiled programs. A fresh process is for what needs one:
the entry point itself, more host devices than the test worker has, or a command killed on
purpose."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

from helix_jax import cli


def helix_here(args: list[str], cwd: Path | str | None = None,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`helix ARGS` run by `cli.main` in this process, from folder `cwd` with `env` added to
    the environment; returns what `subprocess.run` would (args, returncode, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    saved_env = {k: os.environ.get(k) for k in (env or {})}
    here = os.getcwd()
    try:
        os.environ.update(env or {})
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = cli.main(list(args))
            except SystemExit as e:  # argparse's own exits (usage errors, --help)
                rc = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(here)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return subprocess.CompletedProcess(["helix", *args], rc, out.getvalue(), err.getvalue())


def helix_process(args: list[str], cwd: Path | str | None = None,
                  env: dict[str, str] | None = None,
                  timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m helix_jax.cli ARGS` in a fresh process (the entry point as users run it)."""
    return subprocess.run([sys.executable, "-m", "helix_jax.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})
