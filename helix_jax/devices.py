"""Host devices: give jax's CPU backend as many devices as a layout needs, before jax starts.

One place for it. jax's own `jax_num_cpu_devices` configuration does the work (it must be set
before the backend initialises); only a jax without that option falls back to XLA's
`--xla_force_host_platform_device_count` flag. Child processes get the same through their
environment (`host_device_env`).
"""

from __future__ import annotations

import os

from helix_jax.limits import MAX_HOST_DEVICES

_FLAG = "--xla_force_host_platform_device_count"
_ENV = "JAX_NUM_CPU_DEVICES"  # jax reads every config option from its upper-case env variable


def _has_config() -> bool:
    import jax

    return hasattr(jax.config, "jax_num_cpu_devices")


def _flag_count() -> int:
    counts = [int(f.split("=", 1)[1]) for f in os.environ.get("XLA_FLAGS", "").split()
              if f.startswith(_FLAG + "=")]
    return counts[-1] if counts else -1


def requested_host_devices() -> int:
    """How many CPU devices jax will start with (or has), as configured; -1 when not set."""
    import jax

    configured = jax.config.jax_num_cpu_devices if _has_config() else -1
    return configured if configured > 0 else _flag_count()


def ensure_host_devices(n: int, exact: bool = False) -> None:
    """Make jax's CPU backend start with at least `n` devices (exactly `n` with `exact`).

    Raises RuntimeError with the way out when jax has already started with too few, and
    ValueError for more than MAX_HOST_DEVICES.
    """
    import jax

    if n > MAX_HOST_DEVICES:
        raise ValueError(f"{n:,} devices are more than the {MAX_HOST_DEVICES} fake CPU devices a "
                         f"program is compiled on here; training projections of more are composed "
                         f"(tp-pp, `helix project --mode train`)")
    current = requested_host_devices()
    if current == n or (not exact and current >= n):
        return
    try:
        if _has_config():
            jax.config.update("jax_num_cpu_devices", n)
        else:  # an old jax: the XLA flag, read when the backend starts (make_mesh checks the count)
            flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_FLAG)]
            os.environ["XLA_FLAGS"] = " ".join(flags + [f"{_FLAG}={n}"])
        return
    except RuntimeError:
        have = len(jax.devices("cpu"))
        if have == n or (not exact and have >= n):
            return
        raise RuntimeError(
            f"jax already started with {have} CPU devices and {n} are needed; set them before "
            f"the first jax operation: helix_jax.devices.ensure_host_devices({n}) or "
            f"{_ENV}={n} in the environment") from None


def host_device_env(env: dict[str, str], n: int) -> dict[str, str]:
    """`env` for a child process whose jax starts with exactly `n` CPU devices."""
    env = dict(env)
    env[_ENV] = str(n)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(_FLAG + "=")]
    env["XLA_FLAGS"] = " ".join(flags + [f"{_FLAG}={n}"])  # for a jax without the option
    return env


def devices_for(n: int):
    """The first `n` devices of the default backend, or of the CPU when it has too few."""
    import jax

    devices = jax.devices()
    if len(devices) < n:
        devices = jax.devices("cpu")
    return devices[:n]
