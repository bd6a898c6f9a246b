"""Every compute dtype through the `helix` command: forward and decode in bfloat16 or float16 on
every layout (both on the single device, each on five or more layouts), checked against the
float64 reference at the dtype's tolerance, and a training step in each 16-bit dtype."""

import pytest

from helix_jax import cli
from tests import reference_np

# float32 layouts agree with the reference to 1e-4 (tests/test_cli.py); a 16-bit run rounds every
# activation, so its output is within a few units of that dtype's last place.
TOLERANCE = {"bfloat16": 5e-2, "float16": 1e-2}
# MoE: a token whose two best experts' router logits round to the same 16-bit value may go to
# the other one, so a few tokens' outputs differ from the reference by a whole expert's output.
MOE_TOLERANCE = 0.25
MOE = ["--capacity-factor", "16"]
SMALL = ["--batch", "16", "--seq", "8"]  # the batch splits over 16 data replicas

# (model, layout, extra flags, the 16-bit dtypes forward and decode are checked in: both on the
# single device, each on five or more layouts)
CASES = [
    ("tiny-dense", "single", [], ("bfloat16", "float16")),
    ("tiny-dense", "helix", [], ("float16",)),
    ("tiny-dense", "tp-pp", [], ("bfloat16",)),
    ("tiny-dense", "kvp:kvp=8", [], ("float16",)),
    ("tiny-dense", "helix:core=seq_a2a", [], ("float16",)),
    ("tiny-dense", "helix:core=qk_gather", [], ("bfloat16",)),
    ("tiny-dense", "dp", [], ("float16",)),
    ("tiny-dense", "dp:fsdp=true", [], ("bfloat16",)),
    ("tiny-dense", "tp-pp:tp=4,pp=2,sp=true", [], ("float16",)),
    ("tiny-moe", "ep", MOE, ("bfloat16",)),
    ("tiny-moe", "helix-ep", MOE, ("float16",)),
]


def _check(path, dtype):
    params, x, y, cfg = reference_np.load_npz(path)
    assert cfg["dtype"] == dtype
    tol = MOE_TOLERANCE if cfg["n_experts"] else TOLERANCE[dtype]
    assert reference_np.relative_error(reference_np.forward(params, x, cfg), y) <= tol


@pytest.mark.parametrize("model, layout, extra, dtypes", CASES,
                         ids=[f"{m}-{lay}" for m, lay, _, _ in CASES])
def test_forward_and_decode_run_in_16_bits(tmp_path, capsys, model, layout, extra, dtypes):
    for dtype in dtypes:
        out = tmp_path / f"f-{dtype}.npz"
        assert cli.main(["forward", "--model", model, "--layout", layout, "--dtype", dtype,
                         "--repeat", "0", "--out", str(out), *extra]) == 0
        _check(out, dtype)
        out = tmp_path / f"d-{dtype}.npz"
        assert cli.main(["decode", "--model", model, "--layout", layout, "--dtype", dtype,
                         "--prompt-len", "4", "--out", str(out), *SMALL, *extra]) == 0
        _check(out, dtype)
    assert "error" not in capsys.readouterr().err


@pytest.mark.parametrize("model, layout, dtype", [
    ("tiny-dense", "helix", "bfloat16"), ("tiny-dense", "tp-pp", "float16"),
    ("tiny-dense", "kvp:kvp=8", "bfloat16"), ("tiny-dense", "dp:fsdp=true", "float16"),
    ("tiny-moe", "ep", "float16"),
])
def test_training_runs_in_16_bits(capsys, model, layout, dtype):
    assert cli.main(["train", "--model", model, "--layout", layout, "--dtype", dtype,
                     "--steps", "2", "--no-progress", *SMALL,
                     *(MOE if model == "tiny-moe" else [])]) == 0
    out = capsys.readouterr().out
    assert "loss" in out and "nan" not in out.lower()
