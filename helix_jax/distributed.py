"""Several processes, one global mesh: the `--num-processes` launcher and jax.distributed set-up.

Every command that runs a model takes the same flags (`add_args`) and calls `start` before it
imports jax. `start` decides which of three roles this process plays:

* single    one process (the default): the host gets as many CPU devices as the layout needs.
* launcher  `--num-processes P` (P > 1) on one machine, no `--process-id`: pick a free port on
            127.0.0.1, start P copies of the same command, each with `--coordinator 127.0.0.1:PORT
            --process-id I` and 1/P of the host devices, stream their output and wait. When one dies
            the others are stopped at once and the launcher exits non-zero naming the one that died.
* member    `--process-id` / `--coordinator` given (real clusters, and the launcher's children),
            or a SLURM (srun) / Open MPI (mpirun) task of a multi-task job: jax.distributed is
            initialised (jax's own cluster detection fills in whatever the flags leave out) and
            the host gets its share of the devices. jax.devices() then lists every process's
            devices, so `Layout.make_mesh` builds the same global mesh as a single process would.

Inside a member the command builds global arrays from host data present on every process
(`global_array`), gathers results back to every process (`to_host`), prints and writes files only on
process 0 (`is_main`), and hands its exit code to `finish` (a clean shutdown on success; on failure
the process leaves at once, so the others are not held in jax's shutdown barrier).

If a process dies the others exit in bounded time: under the launcher, which kills them as soon as
it sees the death; on a cluster, through jax's heartbeat (`--heartbeat-timeout`, default 10 s).
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from helix_jax.devices import ensure_host_devices, host_device_env

INIT_TIMEOUT_S = 120          # every process must join jax.distributed within this
HEARTBEAT_TIMEOUT_S = 10      # a process silent this long is declared dead by the coordinator
ENV_LAUNCHER = "HELIX_LAUNCHER_PID"       # set in the launcher's children: exit if it goes away
ENV_TEST_DIE = "HELIX_TEST_DIE_AFTER_INIT"  # tests: the process with this id SIGKILLs itself


@dataclass(frozen=True)
class Role:
    kind: str                       # "single" | "launcher" | "member"
    num_processes: int | None       # None: jax reads it from the cluster environment
    process_id: int | None = None
    coordinator: str | None = None


_state: dict = {"initialized": False, "finished": False}


def add_args(parser: argparse.ArgumentParser) -> None:
    """--num-processes, --coordinator, --process-id, --heartbeat-timeout."""
    g = parser.add_argument_group("several processes")
    g.add_argument("--num-processes", type=int, metavar="P",
                   help="run as P processes joined by jax.distributed (default 1). Alone: start P "
                   "local processes on 127.0.0.1, each with 1/P of the host devices. With "
                   "--coordinator and --process-id: be one process of a cluster run. Under srun "
                   "or mpirun the values come from the environment.")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help="address of process 0's coordination service (cluster runs)")
    g.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0..P-1")
    g.add_argument("--heartbeat-timeout", type=int, default=HEARTBEAT_TIMEOUT_S, metavar="S",
                   help=f"declare a silent process dead after S seconds (default "
                   f"{HEARTBEAT_TIMEOUT_S})")


def cluster_env_size() -> int | None:
    """The task count when this process is one task of a multi-task SLURM or Open MPI job.

    Mirrors the checks of jax's own cluster detection (jax._src.clusters), which then supplies
    the coordinator address, process count and id.
    """
    env = os.environ
    if all(k in env for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
                              "SLURM_PROCID", "SLURM_LOCALID")):
        n = int(env["SLURM_NTASKS"])
        return n if n > 1 else None
    if "OMPI_MCA_orte_hnp_uri" in env and "OMPI_COMM_WORLD_SIZE" in env:
        n = int(env["OMPI_COMM_WORLD_SIZE"])
        return n if n > 1 else None
    return None


def role_of(args: argparse.Namespace) -> Role:
    """Which role the flags (and environment) give this process; raises ValueError on bad flags."""
    p = getattr(args, "num_processes", None)
    pid = getattr(args, "process_id", None)
    coord = getattr(args, "coordinator", None)
    if p is not None and p < 1:
        raise ValueError(f"--num-processes must be at least 1, got {p}")
    if pid is not None and pid < 0:
        raise ValueError(f"--process-id must be non-negative, got {pid}")
    if pid is not None and p is not None and pid >= p:
        raise ValueError(f"--process-id {pid} is not below --num-processes {p}")
    env_size = cluster_env_size()
    if pid is not None or coord is not None:
        if env_size is None and (pid is None or coord is None or p is None):
            raise ValueError("outside SLURM or Open MPI a cluster run needs all of --coordinator, "
                             "--process-id and --num-processes")
        return Role("member", p, pid, coord)
    if env_size is not None:
        return Role("member", p, None, None)
    if p is not None and p > 1:
        return Role("launcher", p)
    return Role("single", 1)


def local_device_count(devices_needed: int, num_processes: int) -> int:
    if devices_needed % num_processes:
        raise ValueError(f"the layout needs {devices_needed} device(s), which cannot be split "
                         f"evenly over {num_processes} processes")
    return devices_needed // num_processes


def start(args: argparse.Namespace, devices_needed: int,
          argv: list[str] | None = None) -> int | None:
    """Call before importing jax. Returns an exit code when this process was the launcher (its
    children did the work), or None when this process should run the command itself.

    `argv` is the command line of the command (what `cli.main` parsed), needed by the launcher;
    default `args.argv`, then sys.argv[1:].
    """
    role = role_of(args)
    if role.kind == "single":
        ensure_host_devices(devices_needed)
        return None
    if role.kind == "launcher":
        if argv is None:
            argv = getattr(args, "argv", None)
        if argv is None:
            argv = sys.argv[1:]
        return launch(list(argv), role.num_processes, devices_needed)
    initialize(role, devices_needed, heartbeat_timeout=getattr(args, "heartbeat_timeout", None))
    return None


# ----------------------------------------------------------------------------------------------
# member: jax.distributed


def _kwargs_supported(fn, **kwargs) -> dict:
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def initialize(role: Role, devices_needed: int, heartbeat_timeout: int | None = None) -> None:
    """Join jax.distributed as one process of `role`, with its share of the host devices."""
    n = role.num_processes or cluster_env_size()
    if n is not None:
        ensure_host_devices(local_device_count(devices_needed, n), exact=True)
    import jax

    kwargs = _kwargs_supported(
        jax.distributed.initialize,
        initialization_timeout=INIT_TIMEOUT_S,
        heartbeat_timeout_seconds=heartbeat_timeout or HEARTBEAT_TIMEOUT_S)
    jax.distributed.initialize(coordinator_address=role.coordinator,
                               num_processes=role.num_processes, process_id=role.process_id,
                               **kwargs)
    _state["initialized"] = True
    sys.excepthook = _exit_on_uncaught
    if os.environ.get(ENV_LAUNCHER):
        _watch_launcher(int(os.environ[ENV_LAUNCHER]))
    if os.environ.get(ENV_TEST_DIE) == str(jax.process_index()):
        os.kill(os.getpid(), signal.SIGKILL)
    if role.num_processes is not None and jax.process_count() != role.num_processes:
        raise ValueError(f"jax.distributed joined {jax.process_count()} processes, "
                         f"--num-processes says {role.num_processes}")
    if jax.device_count() < devices_needed:
        raise ValueError(f"the layout needs {devices_needed} devices; the {jax.process_count()} "
                         f"processes have {jax.device_count()} together")


def _exit_on_uncaught(kind, value, tb) -> None:
    """An uncaught exception in a member: print it and leave at once. A normal interpreter exit
    would first wait in jax.distributed's shutdown barrier for processes that may never come."""
    sys.__excepthook__(kind, value, tb)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130 if issubclass(kind, KeyboardInterrupt) else 1)


def _watch_launcher(launcher_pid: int) -> None:
    """Leave at once if the launcher goes away (e.g. it was killed): never an orphan that waits."""
    def watch():
        while True:
            if os.getppid() != launcher_pid:
                os._exit(70)
            time.sleep(0.5)
    threading.Thread(target=watch, name="helix-launcher-watch", daemon=True).start()


def finish(rc: int) -> int:
    """End a command with exit code `rc`. In a member process: on success shut jax.distributed down
    cleanly (a barrier with the other processes); on failure leave at once, so that the others are
    not held waiting (the launcher, or the heartbeat on a cluster, then stops them)."""
    if not _state["initialized"] or _state["finished"]:
        return rc
    _state["finished"] = True
    if rc == 0:
        shutdown()
        return rc
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def shutdown() -> None:
    if _state["initialized"]:
        import jax

        jax.distributed.shutdown()
        _state["initialized"] = False


def is_distributed() -> bool:
    """True in a process that joined jax.distributed."""
    return bool(_state["initialized"])


def is_main() -> bool:
    """True on process 0 (the one that prints and writes files); always in a single process."""
    if not _state["initialized"]:
        return True
    import jax

    return jax.process_index() == 0


def describe() -> str:
    """'' in a single process, else e.g. ' in 4 processes'."""
    if not _state["initialized"]:
        return ""
    import jax

    return f" in {jax.process_count()} processes"


# ----------------------------------------------------------------------------------------------
# arrays across processes


def barrier(name: str, timeout_s: int = 900) -> None:
    """Wait until every process gets here, through jax's coordination service.

    Called between compiling and running: a CPU collective (gloo) gives up after about 30 s, and
    on a loaded machine one process may finish compiling much later than another. The
    coordination service's barrier has its own, long timeout. No-op in a single process.
    """
    if not is_distributed():
        return
    from jax._src import distributed as _dist

    client = getattr(_dist.global_state, "client", None)
    if client is not None and hasattr(client, "wait_at_barrier"):
        client.wait_at_barrier(f"helix:{name}", timeout_s * 1000)


def global_array(host, sharding):
    """A jax.Array with `sharding` from a host array that every process holds in full.

    Works in a single process too (there it is a device_put); a jax.Array input is first brought
    to the host (it must be fully addressable, e.g. computed locally on every process).
    """
    import jax
    import numpy as np

    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def to_host(tree):
    """Every leaf as a full numpy array on every process (a collective: call it on all processes).

    A leaf that lives on other processes' devices (not fully addressable) is all-gathered; one this
    process holds entirely is just copied.
    """
    import jax
    import numpy as np

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)


# ----------------------------------------------------------------------------------------------
# launcher


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def child_env(local_devices: int, port: int) -> dict[str, str]:
    env = host_device_env(dict(os.environ), local_devices)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    env["JAX_COORDINATOR_BIND_ADDRESS"] = f"127.0.0.1:{port}"
    env[ENV_LAUNCHER] = str(os.getpid())
    for k in ("SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri"):  # the children are not cluster tasks
        env.pop(k, None)
    root = str(Path(__file__).resolve().parent.parent)  # so the children import this helix_jax
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(
        os.pathsep) if p and p != root])
    return env


def _noise(line: str) -> bool:
    """Gloo's unconditional "[Gloo] Rank 3 is connected to 15 peer ranks..." (and its fragments,
    when threads interleave) on every collective set-up."""
    return "connected peer ranks" in line or re.fullmatch(r"\[Gloo\] Rank \d*\s*", line) is not None


def _pump(stream, out, prefix: str) -> None:
    for line in iter(stream.readline, ""):
        if not _noise(line):
            out.write(prefix + line)
            out.flush()
    stream.close()


def _describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"was killed by {name}"
    return f"exited with status {rc}"


def launch(argv: list[str], num_processes: int, devices_needed: int,
           module: str = "helix_jax.cli") -> int:
    """Run `python -m module *argv` as `num_processes` local processes joined on 127.0.0.1.

    Process 0's output is shown as is, the others' prefixed with [pI]. Returns 0 when all succeed;
    when one fails or dies, kills the others and returns its
    exit status (128 + signal for a signal), after a message naming it.
    """
    local = local_device_count(devices_needed, num_processes)
    port = free_port()
    env = child_env(local, port)
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    try:
        for i in range(num_processes):
            cmd = [sys.executable, "-m", module, *argv, "--num-processes", str(num_processes),
                   "--coordinator", f"127.0.0.1:{port}", "--process-id", str(i)]
            p = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, bufsize=1)
            procs.append(p)
            prefix = "" if i == 0 else f"[p{i}] "
            for stream, out in ((p.stdout, sys.stdout), (p.stderr, sys.stderr)):
                t = threading.Thread(target=_pump, args=(stream, out, prefix), daemon=True)
                t.start()
                pumps.append(t)
        failed: list[tuple[int, int]] = []
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, rc) for i, rc in enumerate(codes) if rc not in (None, 0)]
            if failed or all(rc == 0 for rc in codes):
                break
            time.sleep(0.05)
    except KeyboardInterrupt:
        _stop(procs)
        _join(pumps)
        print("helix: interrupted; stopped the processes", file=sys.stderr)
        return 130
    if not failed:
        _join(pumps)
        return 0
    stopped = _stop(procs)
    _join(pumps)
    first, rc = failed[0]
    others = [f"process {i} {_describe_exit(c)}" for i, c in failed[1:]]
    msg = (f"helix: error: process {first} of {num_processes} {_describe_exit(rc)}"
           + (f" ({'; '.join(others)})" if others else "")
           + (f"; stopped process{'es' if len(stopped) > 1 else ''} "
              f"{', '.join(map(str, stopped))}" if stopped else ""))
    print(msg, file=sys.stderr)
    return rc if rc > 0 else 128 - rc


def _stop(procs: list[subprocess.Popen]) -> list[int]:
    """SIGKILL every process still running; their indices.

    Not SIGTERM: jax takes SIGTERM as a preemption notice and keeps running, and once one process
    is gone the others cannot finish anyway (their collectives wait for it).
    """
    running = [i for i, p in enumerate(procs) if p.poll() is None]
    for i in running:
        procs[i].kill()
    for i in running:
        procs[i].wait()
    return running


def _join(threads: list[threading.Thread], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
