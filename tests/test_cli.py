"""The `helix` command as a user runs it: outputs checked by the independent float64 oracle."""

import numpy as np
import pytest

from helix_jax import cli
from tests import reference_np
from tests.cli_run import helix_here, helix_process


def helix(*args, check=True, fresh=False):
    """`helix ARGS` in the test worker (or, `fresh`, through the entry point in a new process)."""
    result = (helix_process if fresh else helix_here)(list(args))
    if check and result.returncode != 0:
        raise AssertionError(f"helix {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.mark.parametrize("model, layout, extra", [
    ("tiny-dense", "single", []), ("tiny-dense", "helix", []),
    ("tiny-dense", "helix:core=seq_a2a", ["--no-causal"]), ("tiny-dense", "helix:core=qk_gather", []),
    ("tiny-dense", "tp-pp", []), ("tiny-dense", "tp-pp:sp=true", ["--no-causal"]),
    ("tiny-dense", "dp", []), ("tiny-dense", "helix:m=2,n=2,dp=4", []),
    ("tiny-dense", "tp-pp:tp=4,pp=2,dp=2", []),
    ("tiny-moe", "single", ["--capacity-factor", "16"]),
    ("tiny-moe", "ep", ["--capacity-factor", "16", "--top-k", "2"]),
    ("tiny-moe", "helix-ep", ["--capacity-factor", "16"]),
    ("tiny-moe", "tp-pp", ["--capacity-factor", "16"]),
    ("tiny-moe", "ep:ep=8,dp=2", ["--capacity-factor", "16"]),
])
def test_forward_matches_float64_oracle(tmp_path, capsys, model, layout, extra):
    """In-process (the same code path as the console script, without a jax start-up each)."""
    out = tmp_path / "f.npz"
    assert cli.main(["forward", "--model", model, "--layout", layout, "--out", str(out),
                     "--repeat", "0", *extra]) == 0
    stdout = capsys.readouterr().out
    assert "mesh" in stdout and "time" in stdout
    if model == "tiny-moe":
        assert "dropped  [0, 0, 0, 0]" in stdout  # reported per layer; none at capacity factor 16
    params, x, y, cfg = reference_np.load_npz(out)
    assert cfg["causal"] is ("--no-causal" not in extra)
    ref = reference_np.forward(params, x, cfg)
    assert reference_np.relative_error(ref, y) <= 1e-4


def test_params_round_trip_is_exact(tmp_path):
    first, second = tmp_path / "a.npz", tmp_path / "b.npz"
    helix("forward", "--model", "tiny-dense", "--layout", "helix", "--seed", "4", "--out",
          str(first), "--repeat", "0")
    helix("forward", "--model", "tiny-dense", "--layout", "helix:core=seq_a2a", "--seed", "4",
          "--params", str(first), "--out", str(second), "--repeat", "0")
    a, b = np.load(first), np.load(second)
    assert set(a.files) == set(b.files)
    assert np.array_equal(a["input"], b["input"])
    for key in a.files:
        if key not in ("output", "config_json"):
            assert np.array_equal(a[key], b[key]), key
    np.testing.assert_allclose(a["output"], b["output"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("args, words", [
    (["--layout", "helix:m=3"], "n_heads=16 is not divisible|head_dim=8 is not divisible"),
    (["--layout", "nope"], "unknown layout 'nope'"),
    (["--layout", "dp", "--batch", "6"], "batch=6 is not divisible by the 16 shards"),
])
def test_bad_input_gives_a_clear_error(args, words):
    result = helix("forward", "--model", "tiny-dense", "--repeat", "0", *args, check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert __import__("re").search(words, result.stderr), result.stderr


def test_params_that_do_not_fit(tmp_path):
    out = tmp_path / "a.npz"
    helix("forward", "--model", "tiny-dense", "--layout", "single", "--out", str(out), "--repeat", "0")
    result = helix("forward", "--model", "small-dense", "--layout", "single", "--params", str(out),
                   check=False)
    assert result.returncode == 2
    assert "does not fit the model" in result.stderr and "Traceback" not in result.stderr


def test_layouts_lists_every_layout():
    out = helix("layouts", fresh=True).stdout
    for name in ("single", "helix", "tp-pp", "ep", "helix-ep", "dp"):
        assert any(line.startswith(name + " ") for line in out.splitlines()), name


def test_forward_writes_a_profiler_trace(tmp_path, capsys):
    assert cli.main(["forward", "--model", "tiny-dense", "--layout", "single", "--repeat", "1",
                     "--profile", str(tmp_path / "trace")]) == 0
    files = [p.name for p in (tmp_path / "trace").rglob("*") if p.is_file()]
    assert any(f.endswith(".xplane.pb") for f in files) and "perfetto_trace.json.gz" in files
