"""Whether a run fits this host before anything is allocated: the memory its compiled programs
need (per device, times the devices on this host, plus host copies) against what the host has
free (on an accelerator, each device's limit). A run that cannot fit raises ValueError with the
estimate and the way out (the CLI prints it as `helix: error: ...`, exit 2).

jax is imported inside the functions that need it, never at module level.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

from helix_jax.units import gb

ENV_TEST_HOST_MEMORY = "HELIX_TEST_HOST_MEMORY"  # tests: pretend the host has this many bytes free
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
    `analysis.hlo.compiled.read_memory` reads it (XLA's own peak leaves temporaries out on CPU); 0 when
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
