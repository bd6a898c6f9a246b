"""Host-device set-up: give the CPU backend as many devices as a layout needs, before jax starts."""

from __future__ import annotations

import os
import sys

FLAG = "--xla_force_host_platform_device_count"


def ensure_host_devices(n: int) -> None:
    """Ask XLA's CPU backend for at least `n` devices; must run before jax initialises."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    current = [int(f.split("=", 1)[1]) for f in flags if f.startswith(FLAG + "=")]
    if current and current[-1] >= n:
        return
    if "jax" in sys.modules:
        import jax

        backends = getattr(jax._src.xla_bridge, "_backends", {})  # noqa: SLF001
        if backends:
            if len(jax.devices("cpu")) >= n:
                return
            raise RuntimeError(f"jax already started with {len(jax.devices('cpu'))} CPU devices; "
                               f"{n} are needed. Set XLA_FLAGS={FLAG}={n} before importing jax.")
    flags = [f for f in flags if not f.startswith(FLAG + "=")] + [f"{FLAG}={n}"]
    os.environ["XLA_FLAGS"] = " ".join(flags)


def devices_for(n: int):
    """The first `n` devices of the default backend, or of the CPU when it has too few."""
    import jax

    devices = jax.devices()
    if len(devices) < n:
        devices = jax.devices("cpu")
    return devices[:n]
