"""16 fake CPU devices for every test (set before jax starts), and shared helpers."""

import os

_FLAG = "--xla_force_host_platform_device_count"
os.environ["XLA_FLAGS"] = " ".join(
    [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_FLAG)]
    + [f"{_FLAG}=16"])
os.environ["JAX_PLATFORMS"] = "cpu"
# One compilation cache for the whole run, shared by pytest-xdist workers and by the CLI
# subprocesses: the suite compiles the same programs (the single-device reference, each layout's
# init) in many tests. Keys include the jax version and the program, so stale entries never hit.
_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def sixteen_devices():
    """Sharding tests must fail, not skip, without 16 devices."""
    assert len(jax.devices()) == 16, f"expected 16 fake CPU devices, got {len(jax.devices())}"
