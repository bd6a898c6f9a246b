"""Training: exact resume, resume under another layout, no lost work on a crash, logs, traces."""

import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from helix_jax.checkpoint import Checkpoints
from helix_jax.config import resolve_model
from helix_jax.layouts import parse_layout
from helix_jax.model import Sharded
from helix_jax.train import TrainConfig, log_records, train
from tests.helpers import rel_err

CFG = resolve_model("tiny-dense", batch=16, seq=16)


def run(spec, steps, ckpt=None, resume=False, cfg=CFG, **kw):
    return train(Sharded.build(cfg, parse_layout(spec)), TrainConfig(steps=steps), ckpt,
                 resume=resume, progress=False, echo=lambda *_: None, **kw)


def host(params):
    return jax.device_get(params)


def test_resume_continues_exactly(tmp_path):
    straight = run("dp", 6)
    run("dp", 3, tmp_path / "ck")
    resumed = run("dp", 6, tmp_path / "ck", resume=True)
    assert resumed["resumed_from"] == 3 and [h["step"] for h in resumed["history"]] == [4, 5, 6]
    assert rel_err(host(straight["params"]), host(resumed["params"])) <= 1e-6
    losses = [h["loss"] for h in straight["history"]]
    assert [h["loss"] for h in resumed["history"]] == losses[3:]


def test_checkpoints_move_between_layouts(tmp_path):
    """Saved under tp-pp, restored under helix and back: the same numbers, resharded."""
    saved = host(run("tp-pp", 2, tmp_path / "ck")["params"])
    on_helix = run("helix", 2, tmp_path / "ck", resume=True)  # nothing left to do: just restore
    assert on_helix["history"] == [] and on_helix["resumed_from"] == 2
    wq = on_helix["params"]["layers"]["attn"]["wq"]
    assert wq.sharding.spec == Sharded.build(CFG, parse_layout("helix")).param_specs["layers"]["attn"]["wq"]
    assert rel_err(saved, host(on_helix["params"])) == 0
    back = run("tp-pp", 2, tmp_path / "ck", resume=True)
    assert rel_err(saved, host(back["params"])) == 0


def test_loss_keeps_falling_across_a_layout_switch(tmp_path):
    first = run("tp-pp", 8, tmp_path / "ck", save_every=4)
    second = run("helix", 16, tmp_path / "ck", resume=True, log_path=str(tmp_path / "log.jsonl"))
    losses = [h["loss"] for h in first["history"] + second["history"]]
    assert np.mean(losses[-4:]) < np.mean(losses[8:12]) < np.mean(losses[:4])
    records = log_records(tmp_path / "log.jsonl")
    assert [r["step"] for r in records] == list(range(9, 17))
    assert {"loss", "tokens_per_s", "grad_norm", "layout"} <= set(records[0])


def test_moe_training_logs_dropped_tokens(tmp_path):
    cfg = resolve_model("tiny-moe", batch=16, seq=8, capacity_factor=1.0)
    result = run("ep", 2, cfg=cfg, profile_dir=str(tmp_path / "trace"))
    assert result["history"][0]["routed"] == 4 * 16 * 8  # layers x tokens, top-1
    assert 0 <= result["history"][0]["dropped"] < result["history"][0]["routed"]
    traces = [f for _, _, files in os.walk(tmp_path / "trace") for f in files]
    assert any(f.endswith(".xplane.pb") for f in traces)


def test_a_crash_during_a_save_loses_nothing(tmp_path):
    """SIGKILL right after the step-2 save starts: step 1 stays restorable and resume uses the
    newest complete checkpoint (resumed here in-process: one process start, not two)."""
    ckpt = tmp_path / "ck"
    base = [sys.executable, "-m", "helix_jax.cli", "train", "--model", "tiny-dense", "--layout",
            "dp", "--batch", "16", "--seq", "16", "--steps", "3", "--checkpoint-dir", str(ckpt),
            "--save-every", "1", "--no-progress"]
    env = {**os.environ, "HELIX_TEST_KILL_DURING_SAVE": "2"}
    killed = subprocess.run(base, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    latest = Checkpoints(ckpt).latest_step()
    assert latest in (1, 2)  # step 2 only if its write finished before the kill
    if latest == 1:
        assert any(p.name.startswith("2") for p in ckpt.iterdir())  # the interrupted save's debris
    resumed = run("dp", 3, ckpt, resume=True, save_every=1)
    assert resumed["resumed_from"] == latest
    assert [h["step"] for h in resumed["history"]] == list(range(latest + 1, 4))
    assert Checkpoints(ckpt).latest_step() == 3


@pytest.mark.parametrize("saved, other, difference", [
    ({}, {"n_layers": 4}, "n_layers 2 -> 4"),
    ({"vocab": 32}, {"vocab": 64}, "vocab 32 -> 64"),  # only the vocabulary differs
])
def test_resuming_another_model_is_a_clear_error(tmp_path, saved, other, difference):
    run("dp", 1, tmp_path / "ck", cfg=CFG.replace(**saved))
    with pytest.raises(ValueError, match="belongs to another model") as err:
        run("dp", 2, tmp_path / "ck", resume=True, cfg=CFG.replace(**{**saved, **other}))
    assert difference in str(err.value) and "--checkpoint-dir" in str(err.value)
    assert Checkpoints(tmp_path / "ck").latest_step() == 1  # nothing moved aside as corrupt
