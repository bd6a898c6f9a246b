"""Several processes: `--num-processes 4` (and 2) equals one process, and a dead process stops
the run.

The multi-process runs start real `python -m helix_jax.cli` processes (4 x 4 or 2 x 8 CPU devices
joined by jax.distributed on 127.0.0.1); each starts jax, so they are the slow part (~20 s on 2
cores).
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from helix_jax import cli
from helix_jax import distributed as D


def ns(**kw):
    base = dict(num_processes=None, process_id=None, coordinator=None, heartbeat_timeout=None)
    return argparse.Namespace(**{**base, **kw})


@pytest.fixture
def no_cluster_env(monkeypatch):
    for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
              "SLURM_LOCALID", "OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)


def test_roles(no_cluster_env, monkeypatch):
    assert D.role_of(ns()).kind == "single"
    assert D.role_of(ns(num_processes=1)).kind == "single"
    assert D.role_of(ns(num_processes=4)) == D.Role("launcher", 4)
    assert D.role_of(ns(num_processes=4, process_id=2, coordinator="h:1")) == D.Role(
        "member", 4, 2, "h:1")
    with pytest.raises(ValueError, match="needs all of"):
        D.role_of(ns(num_processes=4, process_id=2))
    with pytest.raises(ValueError, match="not below"):
        D.role_of(ns(num_processes=4, process_id=4, coordinator="h:1"))
    with pytest.raises(ValueError, match="at least 1"):
        D.role_of(ns(num_processes=0))
    # an srun task of a 4-task job: jax's cluster detection supplies the values
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node[1-2]")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert D.role_of(ns()) == D.Role("member", None, None, None)
    monkeypatch.setenv("SLURM_NTASKS", "1")  # one task: an ordinary single process
    assert D.role_of(ns()).kind == "single"


def test_device_split_and_messages():
    assert D.local_device_count(16, 4) == 4
    with pytest.raises(ValueError, match="cannot be split evenly over 3 processes"):
        D.local_device_count(16, 3)
    describe, noise = D._describe_exit, D._noise
    assert describe(-9) == "was killed by SIGKILL" and describe(3) == "exited with status 3"
    assert noise("[Gloo] Rank 3 is connected to 15 peer ranks. Expected number of connected peer "
                 "ranks is : 15\n")
    assert not noise("model    tiny-dense\n")
    env = D.child_env(4, 1234)  # the test process has 16 devices: the children get exactly 4
    assert env["JAX_NUM_CPU_DEVICES"] == "4"
    flags = env["XLA_FLAGS"].split()  # also for a jax without jax_num_cpu_devices
    assert "--xla_force_host_platform_device_count=4" in flags
    assert "--xla_force_host_platform_device_count=16" not in flags
    assert env["JAX_PLATFORMS"] == "cpu" and env[D.ENV_LAUNCHER] == str(os.getpid())


def test_single_process_helpers_are_identities():
    import jax

    from helix_jax.layouts import parse_layout

    mesh = parse_layout("helix").make_mesh()
    sharding = jax.sharding.NamedSharding(mesh, jax.P(None, "head"))
    host = np.arange(32.0, dtype=np.float32).reshape(2, 16)
    x = D.global_array(host, sharding)
    assert x.sharding == sharding and np.array_equal(D.to_host({"x": x})["x"], host)
    assert D.is_main() and not D.is_distributed() and D.describe() == ""
    assert D.finish(3) == 3  # not distributed: just the code back


def helix(*args, env=None, timeout=240):
    return subprocess.run([sys.executable, "-m", "helix_jax.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_uneven_split_is_a_clear_error(capsys):
    assert cli.main(["forward", "--model", "tiny-dense", "--layout", "single",
                     "--num-processes", "4"]) == 2
    assert "cannot be split evenly over 4 processes" in capsys.readouterr().err


def test_forward_on_four_processes_equals_one_process(tmp_path):
    """The issue's acceptance check: helix forward --model tiny-dense --layout helix
    --num-processes 4 --out f.npz gives the same output as the single-process command."""
    one, four = tmp_path / "one.npz", tmp_path / "four.npz"
    common = ["forward", "--model", "tiny-dense", "--layout", "helix", "--repeat", "0"]
    assert cli.main([*common, "--out", str(one)]) == 0  # in-process: the test's 16 devices
    r = helix(*common, "--num-processes", "4", "--out", str(four))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("model    tiny-dense") == 1  # only process 0 prints
    assert "on 16 cpu device(s) in 4 processes" in r.stdout
    assert "connected peer ranks" not in r.stderr  # gloo's chatter is filtered
    a, b = np.load(one), np.load(four)
    assert set(a.files) == set(b.files)
    for key in a.files:
        if key not in ("output", "config_json"):
            assert np.array_equal(a[key], b[key]), key  # params and input: bit for bit
    np.testing.assert_allclose(b["output"], a["output"], rtol=0, atol=1e-5)


def test_a_dead_process_stops_the_launch_in_bounded_time():
    start = time.monotonic()
    r = helix("forward", "--model", "tiny-dense", "--layout", "helix", "--repeat", "0",
              "--num-processes", "2", env={D.ENV_TEST_DIE: "1"}, timeout=120)
    elapsed = time.monotonic() - start
    assert r.returncode == 128 + 9, r.stdout + r.stderr
    assert "helix: error: process 1 of 2 was killed by SIGKILL; stopped process 0" in r.stderr
    assert "model" not in r.stdout
    assert elapsed < 90


def test_cluster_members_fail_on_the_heartbeat_when_one_dies():
    """No launcher (as under srun/mpirun with explicit flags): jax's heartbeat stops the others."""
    port = D.free_port()
    env = {**os.environ, D.ENV_TEST_DIE: "1"}
    env.pop(D.ENV_LAUNCHER, None)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "helix_jax.cli", "forward", "--model", "tiny-dense", "--layout",
         "helix", "--repeat", "0", "--num-processes", "4", "--coordinator", f"127.0.0.1:{port}",
         "--process-id", str(i), "--heartbeat-timeout", "3"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(4)]
    try:
        errs = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    codes = [p.returncode for p in procs]
    assert codes[1] == -9
    assert all(c != 0 for c in codes), codes
    assert any("heartbeat" in e or "unhealthy" in e or "died" in e for e in errs[:1] + errs[2:])


def test_train_step_on_two_processes_equals_one_process(tmp_path):
    """Two train steps on 2 processes x 8 devices: the same losses as in one process (the
    forward above runs on four)."""
    from helix_jax.train import log_records

    common = ["train", "--model", "tiny-dense", "--layout", "helix", "--steps", "2",
              "--no-progress"]
    assert cli.main([*common, "--log", str(tmp_path / "one.jsonl")]) == 0
    r = helix(*common, "--num-processes", "2", "--log", str(tmp_path / "two.jsonl"))
    assert r.returncode == 0, r.stdout + r.stderr
    one, two = (log_records(tmp_path / f) for f in ("one.jsonl", "two.jsonl"))
    assert len(two) == 2  # written by process 0 only
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
