"""helix_jax.testing as users get it: the README's example test files run by pytest in a fresh
process, and each helper failing with a readable message when a layout is broken on purpose."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import chex
import numpy as np
import pytest

from helix_jax import testing
from helix_jax.comm import Comm

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> dict[str, str]:
    """The README's example files: each ```python block whose first line is `# NAME.py`."""
    section = README.read_text().split("## Testing your own layouts", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    files = {b.splitlines()[0].removeprefix("# ").strip(): b for b in blocks}
    assert set(files) == {"conftest.py", "test_my_layouts.py"}, files.keys()
    return files


def test_the_readme_example_passes_as_a_users_test_file(tmp_path):
    for name, text in readme_example().items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS", "PYTEST_XDIST_WORKER")}
    # the suite's code-generation flags (compile speed only), not its device count
    env["XLA_FLAGS"] = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_force_host_platform_device_count"))
    env.pop("PYTEST_ADDOPTS", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o",
                           "addopts=", str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"\b6 passed\b", done.stdout), done.stdout[-2000:]


def test_a_wrong_collective_count_prints_both_tables():
    with pytest.raises(AssertionError) as e:
        testing.assert_collectives("tiny-dense", "helix", [
            {"op": "all-reduce", "group_size": 16, "count": 4},
            {"op": "all-reduce", "group_size": 4, "count": 3}])  # the program has 2
    message = str(e.value)
    assert "differ from the expected table" in message
    expected, compiled = message.split("expected:")[1].split("compiled program:")
    assert re.search(r"all-reduce\s+4\s+3\b", expected)
    assert re.search(r"all-reduce\s+4\s+2\b", compiled)


def test_collective_records_follow_the_math():
    """helix on tiny-dense: per layer two [B, S, D] all-reduces over all 16 devices and one
    [B, H/n, S, S] score all-reduce in each of the 4 head groups of 4 dim slices."""
    cfg = testing.model_config("tiny-dense")
    records = {(r.op, r.group_size): r for r in testing.collectives(cfg, "helix")}
    assert set(records) == {("all-reduce", 16), ("all-reduce", 4)}
    out, scores = records["all-reduce", 16], records["all-reduce", 4]
    B, S, D, L = cfg.batch, cfg.seq, cfg.d_model, cfg.n_layers
    assert (out.count, out.shape, out.payload_bytes) == (2 * L, (B, S, D), B * S * D * 4)
    assert (scores.count, scores.shape) == (L, (B, cfg.n_heads // 4, S, S))
    # groups: head group g holds devices 4g..4g+3 (dim slices vary fastest on the mesh)
    assert sorted(scores.groups) == [tuple(range(4 * g, 4 * g + 4)) for g in range(4)]
    assert out.groups == (tuple(range(16)),)


def test_unknown_keys_in_the_expected_table_are_named():
    with pytest.raises(ValueError, match="unknown keys in expected collectives: group"):
        testing.assert_collectives("tiny-dense", "single", [{"op": "all-reduce", "group": 4,
                                                              "count": 1}])


def test_a_broken_layout_names_the_worst_parameter(monkeypatch):
    """Scale every cross-device output reduction by 1.01: the layout no longer computes the
    model, and the failure says which leaf is worst and by how much."""
    reduce_out = Comm.reduce_out

    def broken(self, partial, *logical):
        out = reduce_out(self, partial, *logical)
        return out * 1.01 if self.axes(*logical) else out

    testing.assert_layout_equivalent("tiny-dense", "helix", grads=False)  # fine before
    monkeypatch.setattr(Comm, "reduce_out", broken)
    with pytest.raises(AssertionError) as e:
        testing.assert_layout_equivalent("tiny-dense", "helix")
    message = str(e.value)
    assert message.startswith("tiny-dense on helix (compared in float32) differs from single: "
                              "worst leaf 'output'")
    error = float(re.search(r"relative error ([0-9.e+-]+)", message).group(1))
    assert 1e-3 < error < 1.0


def test_gradients_are_compared_leaf_by_leaf():
    a = np.array
    ref = {"layers": {"w": a([1.0, 2.0])}, "b": a([0.5])}
    testing.assert_trees_close(ref, {"layers": {"w": a([1.0, 2.0 + 1e-7])}, "b": a([0.5])}, 1e-5)
    with pytest.raises(AssertionError, match=r"worst leaf 'layers\.w': relative error 5\.0"):
        testing.assert_trees_close(ref, {"layers": {"w": a([1.0, 12.0])}, "b": a([0.5])}, 1e-5)


def test_fake_devices_checks_its_argument():
    with pytest.raises(ValueError, match="n >= 1"):
        testing.fake_devices(0)
    testing.fake_devices(16)  # what the suite already has: nothing to do
    chex.assert_equal(len(__import__("jax").devices()), 16)


BF16_MODEL = """name = "tiny-file"
n_layers = 2
d_model = 64
n_heads = 8
head_dim = 8
d_ff = 128
vocab = 0
"""


def test_a_bfloat16_model_file_is_compared_in_float32_by_default(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(BF16_MODEL)
    assert testing.model_config(path).dtype == "bfloat16"  # what model files default to
    got = testing.assert_layout_equivalent(path, "helix:m=2,n=2", batch=4, seq=8)
    assert got["y"].dtype == np.float32
    # in the model's own dtype, with bfloat16's tolerance; a too tight one names the dtype
    testing.assert_layout_equivalent(path, "helix:m=2,n=2", batch=4, seq=8, dtype="model")
    with pytest.raises(AssertionError, match=r"compared in bfloat16"):
        testing.assert_layout_equivalent(path, "helix:m=2,n=2", batch=4, seq=8, dtype="model",
                                         rtol=1e-7, grads=False)
