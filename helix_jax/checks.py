"""Checks that run before any work: option ranges, output paths, input files, and whether a run
fits this host's memory. Each raises ValueError with one message naming the option or file, what
is wrong and the way out (the CLI prints it as `helix: error: ...`, exit 2).

Nothing here imports jax at module level: the option and path checks run before jax starts.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from helix_jax.limits import MAX_DEVICES

ENV_TEST_HOST_MEMORY = "HELIX_TEST_HOST_MEMORY"  # tests: pretend the host has this many bytes free

# ----------------------------------------------------------------------------- option ranges


def _at_least(lo: int) -> tuple[Callable[[object], bool], str]:
    return (lambda v: v >= lo), f"at least {lo}"


_FINITE_POSITIVE = (lambda v: math.isfinite(v) and v > 0), "a finite number > 0"

# option dest -> (accepts the value, what it must be). One table for every command, applied to
# whatever options a command has (None: not given); COMMAND_RANGES overrides it per command.
# Ranges that depend on the model (--prompt-len < seq, --top-k <= experts) are checked with it.
def _between(lo: int, hi: int) -> tuple[Callable[[object], bool], str]:
    return (lambda v: lo <= v <= hi), f"between {lo} and {hi:,}"


RANGES: dict[str, tuple[Callable[[object], bool], str]] = {
    "batch": _between(1, 2**20), "seq": _between(1, 2**24), "q_block": _between(0, 2**24),
    "kv_block": _between(0, 2**24), "top_k": _between(1, 4096),
    "capacity_factor": ((lambda v: math.isfinite(v) and 0 < v <= 1024), "a number in (0, 1024]"),
    "seed": ((lambda v: 0 <= v < 2**32), "between 0 and 2**32 - 1"),
    "repeat": _between(0, 10_000), "warmup": _between(0, 10_000), "steps": _between(1, 10**9),
    "save_every": _between(1, 10**9), "lr": _FINITE_POSITIVE,
    "generate": _between(1, 2**24), "context": _between(2, 2**24),
    "heartbeat_timeout": _between(1, 86_400),
    "num_processes": _between(1, 1024), "process_id": _between(0, 1023),
    "devices": _between(1, MAX_DEVICES), "top": _at_least(1), "jobs": _between(1, 256),
    "max_micro": _at_least(0), "max_tp": _at_least(0),
    "batch_chunks": ((lambda v: v == "auto" or (str(v).isdigit() and int(v) >= 1)),
                     "'auto' or a whole number >= 1"),
}
COMMAND_RANGES: dict[tuple[str, str], tuple[Callable[[object], bool], str]] = {
    ("calibrate", "repeat"): _at_least(1),
    ("reproduce", "repeat"): _at_least(1),
}


def check_ranges(command: str, options: dict) -> None:
    """Every option value of `command` inside its range, else a ValueError naming the flag."""
    for dest, value in options.items():
        rule = COMMAND_RANGES.get((command, dest)) or RANGES.get(dest)
        if rule is None or value is None or isinstance(value, bool):
            continue
        accepts, what = rule
        if not accepts(value):
            flag = "--" + dest.replace("_", "-")
            from helix_jax.errors import quote

            raise ValueError(f"{flag} must be {what}, got "
                             f"{value if len(str(value)) <= 24 else quote(value, 24)}")


def prompt_len(prompt_len: int, seq: int) -> None:
    """A decode prompt must leave a position to prefill and at least one step to decode."""
    if not 1 <= prompt_len <= seq - 1:
        raise ValueError(f"--prompt-len {prompt_len} must be between 1 and seq - 1 = {seq - 1}: "
                         f"the prefill needs a position and the decode at least one step")


# ----------------------------------------------------------------------------- paths


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


# ----------------------------------------------------------------------------- memory


def gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:,.1f} GB" if n_bytes >= 1e8 else f"{n_bytes / 1e6:,.1f} MB"


WAY_OUT = "try a smaller --batch, --seq or model, or price the run with `helix project`"


def host_copies(cfg, param_shapes=None) -> int:
    """Bytes a run keeps on the host beside its devices: the float32 input it draws and the
    float32 output it reads back, and the parameters (a tree of shapes) when it writes them out."""
    import jax

    per_token = 1 if cfg.vocab else cfg.d_model
    n = 2 * cfg.batch * cfg.seq * per_token + cfg.batch * cfg.seq * cfg.d_model
    if param_shapes is not None:
        n += sum(math.prod(s.shape) for s in jax.tree.leaves(param_shapes))
    return 4 * n


def host_available_bytes() -> int:
    """Memory this host can still give (MemAvailable), or ENV_TEST_HOST_MEMORY in tests."""
    if os.environ.get(ENV_TEST_HOST_MEMORY):
        return int(os.environ[ENV_TEST_HOST_MEMORY])
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return 2**63  # unknown: do not refuse


def device_bytes(compiled) -> int:
    """Memory of one device running a compiled program: argument + output + temp - alias, as
    `analysis.cost.read_memory` reads it (XLA's own peak leaves temporaries out on CPU); 0 when
    the backend has no memory analysis."""
    m = compiled.memory_analysis()
    if m is None:
        return 0
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def check_fits(programs: list, mesh, what: str, way_out: str, host_extra: int = 0) -> None:
    """Refuse a run whose compiled `programs` (run one after another on `mesh`) cannot fit.

    CPU devices share the host's memory: all of this process's devices together, plus
    `host_extra` (host copies of inputs and outputs), must fit MemAvailable. Accelerators: one
    device's need must fit its memory limit, and `host_extra` the host.
    """
    import jax

    per_device = max((device_bytes(p) for p in programs), default=0)
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    n = len(local)
    host = host_available_bytes()
    if local[0].platform == "cpu":
        need = per_device * n + host_extra
        if need > host:
            extra = f", + {gb(host_extra)} host copies" if host_extra else ""
            raise ValueError(f"{what} needs ~{gb(need)} on this host ({n} devices x "
                             f"{gb(per_device)} each, from the compiled program{extra}), "
                             f"{gb(host)} free; {way_out}")
        return
    limits = [(d.memory_stats() or {}).get("bytes_limit", 0) for d in local]
    limit = min((x for x in limits if x), default=0)
    if limit and per_device > limit:
        raise ValueError(f"{what} needs ~{gb(per_device)} per device (read from the compiled "
                         f"program), the {local[0].device_kind} has {gb(limit)}; {way_out}")
    if host_extra > host:
        raise ValueError(f"{what} needs ~{gb(host_extra)} of host memory for its host copies, "
                         f"{gb(host)} available; {way_out}")
