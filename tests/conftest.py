"""16 fake CPU devices for every test (set before jax starts), and shared helpers."""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["JAX_NUM_CPU_DEVICES"] = "16"  # jax's own option; CLI subprocesses inherit it
# One compilation cache for the whole run, shared by pytest-xdist workers and by the CLI
# subprocesses: the suite compiles the same programs (the single-device reference, each layout's
# init) in many tests. Keys include the jax version and the program, so stale entries never hit.
_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

from helix_jax.analysis.planner.cache import use_fast_codegen  # noqa: E402
from helix_jax.devices import ensure_host_devices  # noqa: E402

# XLA:CPU's cheapest code generation for every program the suite compiles (and, through
# XLA_FLAGS, its CLI subprocesses): LLVM at its lowest optimisation and, where the jaxlib has them,
# the classic fusion emitters (planner/cache.py): the collectives and memory analysis the tests
# read, in about half the compile time; the tiny programs run no slower that matters.
# And one LLVM module per program: with two test workers on two cores, splitting each into
# parallel codegen jobs only adds overhead (about 7% of the suite's compile time).
use_fast_codegen(classic_fusions=True)
if "xla_cpu_parallel_codegen_split_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] += " --xla_cpu_parallel_codegen_split_count=1"

ensure_host_devices(16)


@pytest.fixture(scope="session", autouse=True)
def sixteen_devices():
    """Sharding tests must fail, not skip, without 16 devices."""
    assert len(jax.devices()) == 16, f"expected 16 fake CPU devices, got {len(jax.devices())}"
