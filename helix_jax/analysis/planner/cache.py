"""The planner's disk cache: compiled programs kept as what the pricing reads, so a later run
re-prices instead of recompiling.

Two levels, both keyed by content (sha256 of a JSON description):

  programs  one entry per compiled program: its optimised HLO text, its `memory_analysis()` and
            `cost_analysis()` and the seconds the compile took. The key is what was compiled (the
            program kind, the model config, the layout without its node placement, batch chunks,
            remat, partitioner and the other arguments), the jax and jaxlib versions and a hash
            of the source that builds programs. Nothing hardware-dependent is in it, so another
            hardware profile, or another batch whose pipeline microbatch is the same size, reuses
            it.
  priced    one entry per candidate and hardware profile: the projection `project()` returned.
            The key adds the hardware profile's fields and a hash of the whole package, so a run
            with the same inputs takes seconds.

A `ProgramCache` is an `analysis.compiler.Compiler`: the planner passes it to `project`, which
asks it for every program; a hit hands back a `CachedProgram`, which answers `as_text()`,
`memory_analysis()` and `cost_analysis()` like a compiled program does.
Node placement (`place=`) only renumbers mesh positions onto GPUs; the compiled program is the
same (tests/test_plan.py checks it), so it is left out of program keys.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from helix_jax.analysis.costmodel.compiler import DIRECT
from helix_jax.analysis.hlo import memo

ENV = "HELIX_PLAN_CACHE"  # overrides the default cache folder
_PACKAGE = Path(__file__).resolve().parents[2]  # helix_jax/
# Source files (besides analysis/hlo/) that never change what is compiled, only its price.
_PRICING_ONLY = {"analysis/costmodel/roofline.py", "analysis/costmodel/pricing.py",
                 "analysis/costmodel/hardware.py", "analysis/costmodel/formulas.py",
                 "analysis/__init__.py", "cli.py", "calibrate.py", "decode.py", "distributed.py",
                 "checkpoint.py", "npz.py", "options.py", "files.py", "memory_check.py",
                 "units.py"}
_MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                  "alias_size_in_bytes", "generated_code_size_in_bytes")


# XLA:CPU's LLVM code generation at its lowest optimisation: the planner reads the optimised HLO,
# the buffer assignment and cost analysis, which XLA's HLO passes produce before code generation,
# so they come out the same (the same HLO text and memory_analysis, checked on a paper-dense
# stage program and a whole training step), and a compile takes about half as long.
FAST_CODEGEN_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
# Fusions through XLA:CPU's classic IR emitters instead of the MLIR fusion emitters, which own most
# of a small program's compile time: the test suite compiles in about 60% of the time. Not for
# projections: it also makes XLA expand scatters (MoE dispatch) before fusion, so a MoE program's
# memory-bound kernels move (paper-moe on tp-pp: 482,196 -> 482,187 tokens/s). jaxlib 0.11 dropped
# the classic emitters and the flag, and XLA aborts on a flag it does not know (seen on jaxlib
# 0.11.2, results/h200_check.log): older jaxlibs only.
CLASSIC_FUSION_FLAGS = ("--xla_cpu_use_fusion_emitters=false",)


def _jaxlib_version() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(p) for p in version("jaxlib").split(".")[:2] if p.isdigit())


def use_fast_codegen(classic_fusions: bool = False) -> None:
    """Add FAST_CODEGEN_FLAGS (and, with `classic_fusions`, CLASSIC_FUSION_FLAGS where this jaxlib
    has them) to XLA_FLAGS; effective when jax's backend has not started yet."""
    wanted = FAST_CODEGEN_FLAGS + (CLASSIC_FUSION_FLAGS if classic_fusions
                                   and _jaxlib_version() < (0, 11) else ())
    flags = os.environ.get("XLA_FLAGS", "").split()
    names = {f.split("=")[0] for f in flags}
    flags += [f for f in wanted if f.split("=")[0] not in names]
    os.environ["XLA_FLAGS"] = " ".join(flags)


def default_dir() -> Path:
    """$HELIX_PLAN_CACHE, else ~/.cache/helix_jax/plan."""
    return Path(os.environ.get(ENV) or Path.home() / ".cache" / "helix_jax" / "plan")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def source_hash(pricing_too: bool) -> str:
    """sha256 over the package's source: the files that build programs, or (`pricing_too`) all
    of it except the report layer and the planner itself."""
    h = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        rel = path.relative_to(_PACKAGE).as_posix()
        # the report layer, the subcommands and the planner itself (it decides what to
        # project, not what a projection is) change neither a program nor its price; the HLO
        # reader and the pricing files change only the price
        if rel.startswith(("report/", "commands/", "analysis/planner/")):
            continue
        if not pricing_too and (rel in _PRICING_ONLY or rel.startswith("analysis/hlo/")):
            continue
        h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


class CachedProgram:
    """What the projection reads off a compiled program, stored: HLO text, memory and cost."""

    def __init__(self, hlo: str, memory: dict[str, int], cost: dict[str, float],
                 compile_seconds: float):
        self.hlo, self.memory, self.cost = hlo, memory, cost
        self.compile_seconds = compile_seconds
        self.digest: str | None = None  # of the HLO text, once read-outs are kept
        self.readouts_kept = 0

    @classmethod
    def of(cls, compiled, compile_seconds: float) -> CachedProgram:
        stats = compiled.memory_analysis()
        memory = {f: int(getattr(stats, f, 0) or 0) for f in _MEMORY_FIELDS}
        raw = compiled.cost_analysis()
        if isinstance(raw, (list, tuple)):
            raw = raw[0] if raw else {}
        cost = {k: float(v) for k, v in (raw or {}).items() if isinstance(v, (int, float))}
        return cls(compiled.as_text(), memory, cost, compile_seconds)

    def as_text(self) -> str:
        return self.hlo

    def memory_analysis(self):
        return SimpleNamespace(**self.memory)

    def cost_analysis(self) -> dict[str, float]:
        return dict(self.cost)

    def to_json(self) -> dict:
        return {"hlo": self.hlo, "memory": self.memory, "cost": self.cost,
                "compile_seconds": self.compile_seconds}

    @classmethod
    def from_json(cls, d: dict) -> CachedProgram:
        return cls(d["hlo"], d["memory"], d["cost"], d["compile_seconds"])


@dataclasses.dataclass
class CacheStats:
    """What one run did: programs compiled (cache misses) and loaded, projections reused."""

    compiles: int = 0
    program_hits: int = 0
    priced_hits: int = 0
    priced_misses: int = 0
    compile_seconds: float = 0.0
    saved_compile_seconds: float = 0.0


class ProgramCache:
    """Compiled programs and priced projections on disk under `root` (see the module doc).
    `root=None` keeps nothing on disk (every program is compiled, once per run)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else None
        self.stats = CacheStats()
        self._memo: dict[str, CachedProgram] = {}
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._program_code = source_hash(pricing_too=False)
        self._all_code = source_hash(pricing_too=True)
        import jax
        import jaxlib

        self._direct = DIRECT  # what a miss compiles with
        self._versions = {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                          "backend": jax.default_backend()}
        if self.root is not None:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ValueError(f"cannot use the plan cache folder {self.root}: {e}") from None

    # ------------------------------------------------------------------ storage

    def _path(self, level: str, key: str) -> Path:
        return self.root / level / key[:2] / f"{key}.json.gz"

    def _read(self, level: str, key: str) -> dict | None:
        if self.root is None:
            return None
        path = self._path(level, key)
        try:
            with gzip.open(path, "rt") as f:
                return json.load(f)
        except (OSError, ValueError, EOFError):
            return None  # absent or torn: recompute

    def _write(self, level: str, key: str, data: dict) -> None:
        if self.root is None:
            return
        path = self._path(level, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with gzip.open(tmp, "wt", compresslevel=3) as f:
            json.dump(data, f)
        os.replace(tmp, path)  # readers see the whole entry or none

    # ------------------------------------------------------------------ programs

    def program_key(self, kind: str, sharded, args: tuple, kwargs: dict) -> str:
        """The content key of one compile: what is compiled, with which jax and which code."""
        cfg = dataclasses.asdict(sharded.cfg)
        layout = sharded.layout
        options = {k: v for k, v in layout.options.items() if k != "place"}
        remat = sharded.remat
        if kind == "update":  # the optimizer update sees the parameters' shards only
            for field in ("batch", "seq", "q_block", "kv_block"):
                cfg.pop(field, None)
            options.pop("sp", None)
            remat = None
        return _digest({"kind": kind, "cfg": cfg, "layout": layout.kind, "options": options,
                        "mesh": list(layout.mesh_shape), "batch_chunks": sharded.batch_chunks,
                        "remat": remat,
                        "partitioner": sharded.partitioner,
                        # float8 serving weights only: other keys stay as they were
                        **({"weights": sharded.weights} if sharded.weights != "model" else {}),
                        "args": [repr(a) for a in args],
                        "kwargs": {k: repr(v) for k, v in sorted(kwargs.items())},
                        "code": self._program_code, **self._versions})

    # ------------------------------------------------------------------ the Compiler interface

    def program(self, sharded, mode: str) -> CachedProgram:
        return self._cached("program", self._direct.program, sharded, mode)

    def step(self, sharded, mode: str) -> CachedProgram:
        return self._cached("step", self._direct.step, sharded, mode)

    def head(self, sharded) -> CachedProgram:
        return self._cached("head", self._direct.head, sharded)

    def grad(self, sharded) -> CachedProgram:
        return self._cached("grad", self._direct.grad, sharded)

    def update(self, sharded) -> CachedProgram:
        return self._cached("update", self._direct.update, sharded)

    def _cached(self, kind: str, compile_fn, sharded, *args, **kwargs) -> CachedProgram:
        """The program `compile_fn(sharded, *args, **kwargs)` compiles, from the cache if there
        (threads asking for the same program wait for one compile)."""
        key = self.program_key(kind, sharded, args, kwargs)
        with self._lock:
            lock = self._key_locks.setdefault(key, threading.Lock())
        with lock:
            if key in self._memo:
                with self._lock:
                    self.stats.program_hits += 1
                return self._memo[key]
            stored = self._read("programs", key)
            if stored is not None:
                prog = CachedProgram.from_json(stored)
                self._load_readouts(key, prog)
                with self._lock:
                    self.stats.program_hits += 1
                    self.stats.saved_compile_seconds += prog.compile_seconds
            else:
                start = time.perf_counter()
                compiled = compile_fn(sharded, *args, **kwargs)
                prog = CachedProgram.of(compiled, time.perf_counter() - start)
                with self._lock:
                    self.stats.compiles += 1
                    self.stats.compile_seconds += prog.compile_seconds
                self._write("programs", key, prog.to_json())
            self._memo[key] = prog
            return prog

    # ------------------------------------------------------------------ read-outs

    def _readouts_path(self, key: str) -> Path:
        """Beside the program; named by the pricing code too (a read-out is the analysis code's)."""
        return self.root / "programs" / key[:2] / f"{key}.{self._all_code[:16]}.readouts.pkl"

    def _load_readouts(self, key: str, prog: CachedProgram) -> None:
        """Preload the read-outs kept with a stored program (`analysis.memo`), so pricing it on
        any profile parses no HLO. Written by this package only, in the user's own cache."""
        import pickle

        if self.root is None:
            return
        try:
            values = pickle.loads(self._readouts_path(key).read_bytes())
        except (OSError, ValueError, EOFError, pickle.UnpicklingError, AttributeError,
                ImportError, TypeError):
            return  # absent, torn or from other code: compute again
        prog.digest = memo.digest(prog.hlo)
        prog.readouts_kept = len(values)
        memo.preload(prog.digest, values)

    def save_readouts(self) -> None:
        """Keep the read-outs of every program used in this run whose analysis grew."""
        import pickle

        if self.root is None:
            return
        for key, prog in list(self._memo.items()):
            prog.digest = prog.digest or memo.digest(prog.hlo)
            values = memo.values_of(prog.digest)
            if len(values) <= prog.readouts_kept:
                continue
            path = self._readouts_path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL))
            os.replace(tmp, path)
            prog.readouts_kept = len(values)

    # ------------------------------------------------------------------ priced projections

    def priced_key(self, description: dict, hardware: dict) -> str:
        return _digest({"what": description, "hardware": hardware, "code": self._all_code,
                        **self._versions})

    def priced(self, key: str) -> dict | None:
        got = self._read("priced", key)
        if got is not None:
            with self._lock:
                self.stats.priced_hits += 1
        return got

    def store_priced(self, key: str, projection: dict) -> None:
        with self._lock:
            self.stats.priced_misses += 1
        self._write("priced", key, projection)
