"""Bad input, by class, through the real `helix` command: every case ends with exactly one line
`helix: error: ...` naming the problem, the right exit code (2: usage, 1: failure at run time), no
traceback, and every file that existed before byte-for-byte as it was (nothing new written).
Plus checkpoints with a flipped bit: detected, skipped with a warning, training resumes."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from helix_jax import npz
from helix_jax.analysis.costmodel.hardware import HARDWARE, hardware_to_dict
from helix_jax.errors import classify
from tests.cli_run import helix_here, helix_process

GPT = ('name = "mini"\nn_layers = 2\nd_model = 64\nn_heads = 4\nhead_dim = 16\nd_ff = 128\n'
       'vocab = 100\n')


def _inputs(root: Path) -> None:
    """The files and folders the cases point at (and that must come out unchanged)."""
    (root / "adir").mkdir()
    (root / "afile").write_text("a file, not a folder\n")
    (root / "existing.npz").write_bytes(b"an output file from an earlier run")
    (root / "ck").mkdir()  # a checkpoint folder a bad run must not touch
    (root / "ck" / "train_log.jsonl").write_text('{"step": 1}\n')
    (root / "garbage.npz").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "pickle.npz").write_bytes(pickle.dumps({"layers.0.attn.wq": [1.0, 2.0]}))
    np.savez(root / "whole.npz", **{"layers.0.attn.wq": np.ones((128, 16, 8), np.float32)})
    (root / "truncated.npz").write_bytes((root / "whole.npz").read_bytes()[:3000])
    (root / "whole.npz").unlink()
    nan = np.ones((128, 16, 8), np.float32)
    nan[3, 2, 1] = np.nan
    np.savez(root / "nan.npz", **{"layers.0.attn.wq": nan})
    np.savez(root / "shape.npz", **{"layers.0.attn.wq": np.ones((2, 2), np.float32)})
    (root / "garbage.toml").write_bytes(b"\xff\xfe n_layers = = 2\n")
    (root / "unknown.toml").write_text(GPT + "dropout = 0.1\n")
    (root / "wrongtype.toml").write_text(GPT.replace("n_layers = 2", 'n_layers = "two"'))
    (root / "nan.toml").write_text(GPT + "ln_eps = nan\n")
    (root / "garbage.json").write_text("{ this is not json")
    hw = hardware_to_dict(HARDWARE["h100-paper"])
    (root / "hw_missing.json").write_text(json.dumps(
        {k: v for k, v in hw.items() if k != "ib_bytes_per_s"}))
    (root / "hw_type.json").write_text(json.dumps({**hw, "flops_per_s": "fast"}))
    (root / "hw_half_gpu.json").write_text(json.dumps({**hw, "gpus_per_node": 0.5}))
    (root / "hw_typo.json").write_text(json.dumps({**hw, "gpus_per_nod": 8}))
    (root / "huge_layers.toml").write_text(GPT.replace("n_layers = 2", "n_layers = 1000000000000"))
    (root / "huge_heads.toml").write_text(GPT.replace("n_heads = 4", f"n_heads = {2**70}"))


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file()
                                       else "dir") for p in sorted(root.rglob("*"))}


FWD = ["forward", "--model", "tiny-dense", "--layout", "single", "--repeat", "0"]
TRAIN = ["train", "--model", "tiny-dense", "--layout", "single", "--steps", "2"]
PROJECT = ["project", "--model", "tiny-dense", "--layout", "helix"]
DECODE = ["decode", "--model", "tiny-dense", "--layout", "single"]

# (name, arguments, exit code, what the one error line must say)
CASES = [
    # the command line itself
    ("no command", [], 2, "the following arguments are required: command"),
    ("unknown preset", ["forward", "--model", "nope"], 2, "unknown model 'nope'"),
    ("misspelt preset", ["forward", "--model", "tiny-lama"], 2,
     "unknown model 'tiny-lama' (did you mean 'tiny-llama'?)"),
    ("not a number", ["train", "--steps", "abc"], 2, "argument --steps: invalid int value"),
    ("unknown flag", [*FWD, "--bogus"], 2, "unrecognized arguments: --bogus"),
    # hyper-parameters and options out of range
    ("negative lr", [*TRAIN, "--lr", "-1"], 2, "--lr must be a finite number > 0, got -1.0"),
    ("nan lr", [*TRAIN, "--lr", "nan"], 2, "--lr must be a finite number > 0, got nan"),
    ("zero steps", [*TRAIN, "--steps", "0"], 2, "--steps must be between 1 and 1,000,000,000, got 0"),
    ("zero save interval", [*TRAIN, "--save-every", "0"], 2, "--save-every must be between 1 and"),
    ("negative repeat", [*FWD, "--repeat", "-1"], 2, "--repeat must be between 0 and 10,000, got -1"),
    ("zero batch", [*FWD, "--batch", "0"], 2, "--batch must be between 1 and 1,048,576, got 0"),
    ("negative seed", [*FWD, "--seed", "-5"], 2, "--seed must be between 0 and 2**32 - 1"),
    ("negative q block", [*FWD, "--q-block", "-1"], 2, "--q-block must be between 0 and"),
    ("zero capacity", ["forward", "--model", "tiny-moe", "--capacity-factor", "0"], 2,
     "--capacity-factor must be a number in (0, 1024]"),
    ("top-k above experts", ["forward", "--model", "tiny-moe", "--top-k", "17"], 2,
     "top_k=17 is more than n_experts=16"),
    ("batch chunks", [*PROJECT, "--batch-chunks", "two"], 2,
     "--batch-chunks must be 'auto' or a whole number >= 1, got two"),
    ("calibrate repeat", ["calibrate", "--repeat", "0"], 2, "--repeat must be at least 1"),
    ("heartbeat", [*FWD, "--heartbeat-timeout", "0"], 2, "--heartbeat-timeout must be between 1 and"),
    ("prompt too long", [*DECODE, "--prompt-len", "32"], 2,
     "--prompt-len 32 must be between 1 and seq - 1 = 31"),
    ("context", [*PROJECT, "--mode", "decode", "--context", "1"], 2,
     "--context must be between 2 and 16,777,216, got 1"),
    ("resume without a folder", [*TRAIN, "--resume"], 2, "--resume needs --checkpoint-dir"),
    # every output path, checked before the work
    ("--out folder missing", [*FWD, "--out", "missing/y.npz"], 2,
     "missing does not exist; create it first"),
    ("--out is a folder", [*FWD, "--out", "adir"], 2, "--out adir is a folder"),
    ("--out under a file", [*FWD, "--out", "afile/y.npz"], 2, "afile is a file, not a folder"),
    ("--profile under a file", [*FWD, "--profile", "afile/trace"], 2,
     "afile is a file, not a folder"),
    ("decode --out folder missing", [*DECODE, "--prompt-len", "4", "--out", "missing/d.npz"],
     2, "missing does not exist"),
    ("--json folder missing", [*PROJECT, "--json", "missing/r.json"], 2, "missing does not exist"),
    ("--checkpoint-dir is a file", [*TRAIN, "--checkpoint-dir", "afile"], 2,
     "--checkpoint-dir afile exists and is not a folder"),
    ("--log folder missing", [*TRAIN, "--checkpoint-dir", "ck", "--log", "missing/l.jsonl"], 2,
     "missing does not exist"),
    ("--profile is a file", [*TRAIN, "--profile", "afile"], 2,
     "--profile afile exists and is not a folder"),
    ("reproduce --out is a file", ["reproduce", "--out", "afile"], 2,
     "--out afile exists and is not a folder"),
    ("calibrate --out folder missing", ["calibrate", "--out", "missing/c.json"], 2,
     "missing does not exist"),
    # input files: missing, a folder, garbage, mismatched
    ("--params missing", [*FWD, "--params", "none.npz"], 2, "--params none.npz: no such file"),
    ("--params a folder", [*FWD, "--params", "adir"], 2, "adir is a folder, not an npz file"),
    ("--params garbage", [*FWD, "--params", "garbage.npz"], 2,
     "garbage.npz is not a readable npz archive"),
    ("--params a pickle", [*FWD, "--params", "pickle.npz"], 2,
     "pickle.npz is not a readable npz archive"),
    ("--params truncated", [*FWD, "--params", "truncated.npz"], 2,
     "truncated.npz is not a readable npz archive"),
    ("--params with NaN", [*FWD, "--params", "nan.npz"], 2,
     "array layers.0.attn.wq has 1 non-finite value(s)"),
    ("--params wrong shape", [*FWD, "--params", "shape.npz"], 2,
     "layers.0.attn.wq has shape (2, 2) but the model needs (128, 16, 8)"),
    ("--model-file missing", [*FWD, "--model-file", "none.toml"], 2,
     "model file none.toml: no such file"),
    ("--model-file garbage", [*FWD, "--model-file", "garbage.toml"], 2, "not valid TOML"),
    ("--model-file unknown key", [*FWD, "--model-file", "unknown.toml"], 2,
     "unknown key 'dropout'"),
    ("--model-file wrong type", [*FWD, "--model-file", "wrongtype.toml"], 2,
     "n_layers must be int, got str 'two'"),
    ("--model-file NaN", [*FWD, "--model-file", "nan.toml"], 2,
     "ln_eps must be a number in (0, 1], got nan"),
    ("--hardware missing", [*PROJECT, "--hardware", "none.json"], 2,
     "unknown hardware 'none.json': no such file"),
    ("--hardware garbage", [*PROJECT, "--hardware", "garbage.json"], 2,
     "hardware file garbage.json: not valid JSON"),
    ("--hardware missing field", [*PROJECT, "--hardware", "hw_missing.json"], 2,
     "missing hardware fields ['ib_bytes_per_s']"),
    ("--hardware wrong type", [*PROJECT, "--hardware", "hw_type.json"], 2,
     "field 'flops_per_s' must be a finite number, got 'fast'"),
    ("--hardware fractional GPUs", [*PROJECT, "--hardware", "hw_half_gpu.json"], 2,
     "field 'gpus_per_node' must be a whole number between 1 and 1,024, got 0.5"),
    ("--hardware misspelt field", [*PROJECT, "--hardware", "hw_typo.json"], 2,
     "unknown hardware field 'gpus_per_nod' (did you mean 'gpus_per_node'?)"),
    # sizes that cannot be built: refused before any work, naming the field and the bound
    ("--model-file huge n_layers", [*FWD, "--model-file", "huge_layers.toml"], 2,
     "n_layers must be a whole number from 1 to 4,096"),
    ("--model-file huge n_heads", [*FWD, "--model-file", "huge_heads.toml"], 2,
     "n_heads must be a whole number from 1 to 4,096"),
    ("plan on 100,000 devices", ["plan", "--model", "tiny-dense", "--devices", "100000"], 2,
     "--devices must be between 1 and 65,536, got 100000"),
    ("forward plan on 1,024 devices", ["plan", "--model", "tiny-dense", "--devices", "1024"],
     2, "--devices 1,024: a forward plan compiles every layout on that many fake CPU devices"),
    ("a layout of a million devices", [*PROJECT[:3], "--layout", "dp:dp=1048576"], 2,
     "dp=1048576 must be between 1 and 65,536"),
    ("a long garbage layout", [*FWD[:3], "--layout", "helix:" + "x" * 5000], 2,
     "layout helix: cannot read option 'xxxxxxxx"),
    ("calibrate --base a folder", ["calibrate", "--base", "adir"], 2,
     "hardware file adir is a folder"),
    # work that cannot fit the host, from the compiled program, before anything is allocated
    ("paper model on a laptop", ["forward", "--model", "paper-dense", "--layout", "helix"], 2,
     "GB on this host (16 devices x"),
]
# the same check, on a host that (by the test hook) has 1 MB free
SMALL_HOST = [
    ("training that cannot fit", [*TRAIN, "--log", "existing.npz"], 2,
     "training tiny-dense on single needs ~"),
    ("decode that cannot fit", [*DECODE, "--prompt-len", "4", "--out", "existing.npz"], 2,
     "decode of tiny-dense on single needs ~"),
]


# Cases run through the entry point in a fresh process, as a user's shell runs them; the others
# run `cli.main` in the test worker (tests/cli_run.py), which is what that entry point calls.
FRESH_PROCESS = {"no command", "unknown flag", "paper model on a laptop"}


def helix(args: list[str], cwd: Path, env: dict | None = None,
          fresh: bool = False) -> subprocess.CompletedProcess:
    return (helix_process if fresh else helix_here)(args, cwd, env)


def _fails_cleanly(r: subprocess.CompletedProcess, code: int, words: str) -> None:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    assert len(lines) == 1 and lines[0].startswith("helix: error: "), r.stderr
    assert words in lines[0], lines[0]
    assert len(lines[0]) <= 300, f"{len(lines[0])} characters: {lines[0]}"


@pytest.mark.parametrize("name, args, code, words", CASES + SMALL_HOST,
                         ids=[c[0] for c in CASES + SMALL_HOST])
def test_bad_input_is_one_clear_line(tmp_path, name, args, code, words):
    _inputs(tmp_path)
    before = _snapshot(tmp_path)
    env = {"HELIX_TEST_HOST_MEMORY": str(10**6)} if (name, args, code, words) in SMALL_HOST else {}
    r = helix(args, tmp_path, env, fresh=name in FRESH_PROCESS)
    _fails_cleanly(r, code, words)
    assert _snapshot(tmp_path) == before  # nothing lost, half-written, or written at all


def test_debug_shows_the_traceback(tmp_path):
    for args in (["--debug", *FWD, "--out", "missing/y.npz"],
                 [*FWD, "--out", "missing/y.npz", "--debug"]):
        r = helix(args, tmp_path)
        assert r.returncode == 2
        assert "Traceback (most recent call last)" in r.stderr and "check" in r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith("helix: error: --out missing/y.npz")


def test_training_writes_nothing_where_not_asked(tmp_path, monkeypatch, capsys):
    """Without --checkpoint-dir or --log, no train_log.jsonl lands in the working folder."""
    from helix_jax import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--model", "tiny-dense", "--layout", "single", "--batch", "2",
                     "--seq", "8", "--steps", "1", "--no-progress"]) == 0
    assert "log: none" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_unexpected_errors_are_failures_not_usage():
    """Exit 1 with one line for what helix did not raise itself (an XLA runtime error, a
    ValueError from inside a library); exit 2 only for helix's own usage errors."""
    def raised(exc):
        try:
            raise exc
        except BaseException as e:  # gives the exception its traceback
            return e

    def helix_raised():
        try:
            npz.flat_to_params({}, {"w": np.zeros((2, 3))}, "--params x.npz")
        except ValueError as e:
            return e

    code, line = classify(raised(RuntimeError("INTERNAL: boom\n  deep details")))
    assert (code, line) == (1, "RuntimeError: INTERNAL: boom (run with --debug for the traceback)")
    assert classify(raised(ValueError("from a library, not from helix")))[0] == 1
    message = "--params x.npz does not fit the model: missing 1 array(s), e.g. w"
    assert classify(helix_raised()) == (2, message)


def _flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _data_files(step_dir: Path) -> list[Path]:
    """The step's files, largest first."""
    return sorted((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)


def test_a_flipped_bit_in_the_newest_checkpoint_is_caught_and_skipped(tmp_path):
    """One trained checkpoint folder (steps 2 and 4), then: training into it again without
    --resume is refused; one flipped bit in step 4's largest file, or in another of its files, is
    detected, step 4 moved aside with a warning and training resumes from step 2 and finishes;
    every step corrupt ends with exit 1 and leaves the folder as it was."""
    base = ["train", "--model", "tiny-dense", "--layout", "single", "--batch", "2", "--seq", "8",
            "--save-every", "2", "--no-progress"]
    ck = tmp_path / "ck"
    first = helix([*base, "--steps", "4", "--checkpoint-dir", str(ck), "--resume"], tmp_path)
    assert first.returncode == 0, first.stderr
    assert "starting from scratch" in first.stdout
    assert sorted(p.name for p in ck.iterdir()) == ["2", "4", "train_log.jsonl"]

    before = _snapshot(ck)
    again = helix([*base, "--steps", "6", "--checkpoint-dir", str(ck)], tmp_path)
    _fails_cleanly(again, 2, "already holds checkpoints (newest: step 4); pass --resume")
    assert _snapshot(ck) == before

    for case, pick in (("largest", 0), ("another", 1)):
        work = tmp_path / case
        shutil.copytree(ck, work)
        _flip_bit(_data_files(work / "4")[pick])
        r = helix([*base, "--steps", "6", "--checkpoint-dir", str(work), "--resume"], tmp_path)
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
        warnings = [line for line in r.stderr.splitlines() if line.startswith("helix: warning:")]
        assert any("checkpoint step 4" in w for w in warnings), r.stderr
        assert any("moved it aside" in w and "resuming from step 2" in w for w in warnings)
        assert "resumed from step 2" in r.stdout and "over steps 3..6" in r.stdout, r.stdout
        assert (work / "4.corrupt").is_dir() and (work / "6").is_dir()

    broken = tmp_path / "broken"
    shutil.copytree(ck, broken)
    for step in ("2", "4"):
        _flip_bit(_data_files(broken / step)[0])
    before = _snapshot(broken)
    r = helix([*base, "--steps", "6", "--checkpoint-dir", str(broken), "--resume"], tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("helix: error:")]
    assert len(errors) == 1 and "every checkpoint in" in errors[0], r.stderr
    assert "nothing was changed" in errors[0] and "step 4: " in errors[0]
    assert _snapshot(broken) == before
