"""16 fake CPU devices for every test (set before jax starts), and shared helpers."""

import os

_FLAG = "--xla_force_host_platform_device_count"
os.environ["XLA_FLAGS"] = " ".join(
    [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_FLAG)]
    + [f"{_FLAG}=16"])
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def sixteen_devices():
    """Sharding tests must fail, not skip, without 16 devices."""
    assert len(jax.devices()) == 16, f"expected 16 fake CPU devices, got {len(jax.devices())}"
