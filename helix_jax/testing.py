"""Helpers for sharding tests of your own models and layouts, on fake CPU devices (chex inside).

    from helix_jax import testing
    testing.fake_devices(16)                      # in conftest.py, before jax starts
    testing.assert_layout_equivalent("tiny-dense", "helix:core=seq_a2a")
    testing.assert_collectives("tiny-dense", "helix", [
        {"op": "all-reduce", "group_size": 16, "count": 4},
        {"op": "all-reduce", "group_size": 4, "count": 2}])

Equivalence runs the model on the layout and on `single` (float32, the same parameters with every
norm and bias moved off its 1/0 start, so a wrong bias path cannot hide) and compares outputs and
gradients with `chex.assert_trees_all_close`. Collectives are read from the compiled program's HLO:
what each device really runs per step, with its replica groups and bytes. The project's own
layout tests go through these functions.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from helix_jax.config import ModelConfig, resolve_model
from helix_jax.enums import Mode, choices

MODES = choices(Mode)


def fake_devices(n: int) -> None:
    """Make jax's CPU backend start with `n` devices (call before the first jax operation, e.g. at
    the top of a `conftest.py`). Uses jax's own `jax_num_cpu_devices` option; a clear error if jax
    has already started with fewer."""
    import os

    from helix_jax.devices import ensure_host_devices

    if n < 1:
        raise ValueError(f"fake_devices needs n >= 1, got {n}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    ensure_host_devices(n)


def model_config(model: str | Path | ModelConfig, **overrides) -> ModelConfig:
    """A config from a preset name, a model file (.toml), a Hugging Face checkpoint folder or a
    config, with `overrides` applied."""
    if isinstance(model, ModelConfig):
        return model.replace(**overrides)
    if _is_hf_folder(model):
        from helix_jax.hf.config import config_from_hf

        return config_from_hf(model, **overrides)
    return resolve_model(str(model), **overrides)


def _is_hf_folder(model) -> bool:
    return not isinstance(model, ModelConfig) and (Path(model) / "config.json").is_file()


@functools.lru_cache(maxsize=4)
def _hf_params(folder: str, cfg: ModelConfig) -> dict:
    from helix_jax.hf.weights import load_params
    from helix_jax.model import param_shapes

    return load_params(folder, cfg, param_shapes(cfg))


# ------------------------------------------------------------------------------ equivalence


@functools.lru_cache(maxsize=16)
def _host_params(cfg: ModelConfig, seed: int):
    import jax

    from helix_jax.layouts import parse_layout
    from helix_jax.model import Sharded

    return jax.device_get(Sharded.build(cfg, parse_layout("single")).init(seed))


def random_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """Initialised parameters (the same on every layout) with every norm scale and bias moved off
    its 1/0 start by N(0, 0.1) noise, so that a wrong bias or norm path cannot hide."""
    import re

    import jax
    import numpy as np

    params = _host_params(cfg, seed)
    rng = np.random.default_rng(seed + 1)

    def jitter(path, v):
        name = str(getattr(path[-1], "key", path[-1]))
        if name in ("scale", "bias") or re.fullmatch(r"b[0-9qkvo]", name):
            return (v + 0.1 * rng.standard_normal(v.shape)).astype(np.float32)
        return v

    return jax.tree_util.tree_map_with_path(jitter, params)


def run_layout(cfg: ModelConfig, layout: str, params=None, seed: int = 0,
               grads: bool = True, partitioner: str = "shard_map",
               attention_kernel: str = "auto") -> dict:
    """Output `y` [B, S, D] (float32), MoE `stats` and, with `grads`, the gradients of
    sum(y * ct) (ct a fixed random cotangent) w.r.t. the parameters and (embedding inputs) the
    input, all on the host: {"y", "stats", "grads": {"params", "x"}, "params", "x"}.
    `partitioner`: "shard_map" (the hand-written collectives) or "gspmd" (XLA's);
    `attention_kernel`: "auto", "fused" (the library call) or "blockwise" (the scan)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from helix_jax.layouts import parse_layout
    from helix_jax.model import Sharded, random_input

    sharded = Sharded.build(cfg, parse_layout(layout), partitioner=partitioner,
                            attention_kernel=attention_kernel)
    host_params = random_params(cfg, seed) if params is None else params
    params = sharded.place(host_params)
    x = random_input(cfg, seed)
    forward = sharded.forward_fn()
    inputs = {"params": host_params, "x": np.asarray(x)}
    if not grads:
        y, stats = forward(params, x)
        return {"y": np.asarray(y, np.float32), "stats": jax.device_get(stats), **inputs}
    ct = jax.random.normal(jax.random.key(seed + 7), x.shape[:2] + (cfg.d_model,), jnp.float32)
    tokens = jnp.issubdtype(x.dtype, jnp.integer)

    def loss(p, x):  # one program for output and gradients: half the compile time
        y, stats = forward(p, x)
        return jnp.sum(y.astype(jnp.float32) * ct), (y, stats)

    argnums = 0 if tokens else (0, 1)
    (_, (y, stats)), g = jax.jit(jax.value_and_grad(loss, argnums=argnums, has_aux=True))(params, x)
    g = {"params": g} if tokens else {"params": g[0], "x": g[1]}
    return {"y": np.asarray(y, np.float32), "stats": jax.device_get(stats),
            "grads": jax.device_get(g), **inputs}


def single_run(model: str | Path | ModelConfig, seed: int = 0, **overrides) -> dict:
    """The run on `single` (outputs and gradients, `run_layout`'s dict) that
    `assert_layout_equivalent` compares a layout with: computed once per config and seed in
    this process, so other checks of the same model (a decode, say) can share it."""
    cfg = model_config(model, **overrides)
    hf = str(Path(model).resolve()) if _is_hf_folder(model) else None
    return _reference(cfg, seed, True, hf)


@functools.lru_cache(maxsize=8)
def _reference(cfg: ModelConfig, seed: int, grads: bool, hf: str | None = None) -> dict:
    params = _hf_params(hf, cfg) if hf else None
    return run_layout(cfg, "single", params=params, seed=seed, grads=grads)


def leaf_errors(ref, got) -> dict[str, float]:
    """max |ref - got| / max |ref| per leaf of two trees, keyed by the leaf's path."""
    import jax
    import numpy as np

    out = {}
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ref), jax.tree.leaves(got)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = max(float(np.abs(a).max(initial=0.0)), 1e-30)
        out[_path_name(path)] = float(np.abs(a - b).max(initial=0.0)) / scale
    return out


def _path_name(path) -> str:
    parts = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    return ".".join(parts) or "<root>"


def assert_trees_close(ref, got, rtol: float, what: str = "") -> None:
    """chex.assert_trees_all_close with each leaf's tolerance scaled by its largest |value|
    (|got - ref| <= rtol * max|ref|, elementwise), so that entries near zero are judged on the
    leaf's scale; on failure the message leads with the worst leaf and its relative error."""
    import chex
    import jax
    import numpy as np

    ref, got = (jax.tree.map(np.asarray, t) for t in (ref, got))
    chex.assert_trees_all_equal_shapes(ref, got)
    errors = leaf_errors(ref, got)
    worst = max(errors, key=errors.get) if errors else None
    try:
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ref), jax.tree.leaves(got)):
            a = np.asarray(a, np.float64)
            atol = rtol * max(float(np.abs(a).max(initial=0.0)), 1e-30)
            chex.assert_trees_all_close(np.asarray(b, np.float64), a, rtol=0.0, atol=atol)
    except AssertionError as e:
        detail = str(e).strip().splitlines()
        raise AssertionError(
            f"{what}worst leaf {worst!r}: relative error {errors[worst]:.3e} > rtol {rtol:.1e} "
            f"(max |got - ref| / max |ref|); {sum(v > rtol for v in errors.values())} of "
            f"{len(errors)} leaves off.\nchex: " + " ".join(detail[:6])) from None


# The default tolerance of a comparison in each compute dtype: float32 agrees to rounding; a
# 16-bit run differs from another layout's by its rounding of different partial sums (about
# 2**-8 relative for bfloat16's 8-bit mantissa, 2**-11 for float16), accumulated over layers.
RTOL = {"float32": 1e-5, "float16": 5e-3, "bfloat16": 3e-2}


def assert_layout_equivalent(model: str | Path | ModelConfig, layout: str, *, grads: bool = True,
                             rtol: float | None = None, seed: int = 0,
                             partitioner: str = "shard_map", dtype: str = "float32",
                             **overrides) -> dict:
    """Assert that `model` on `layout` computes what it computes on `single`: the outputs and,
    with `grads`, the gradients w.r.t. every parameter (and the input), within `rtol` of each
    leaf's scale. `model` is a preset, a model file, a config or a Hugging Face checkpoint folder
    (its own weights are then compared). `overrides` change the config (e.g. causal=False,
    capacity_factor=16.0);
    `partitioner="gspmd"` checks XLA's partitioning of the same layout instead of ours.

    `dtype`: the compute dtype both runs use: "float32" (default, whatever the model's own, e.g.
    a model file's bfloat16, so a wrong split cannot hide in rounding) or "model" for the model's
    dtype; `rtol` defaults to that dtype's tolerance (`RTOL`). On failure the message names the
    worst parameter, its error and the dtype compared in. Returns the layout's run."""
    cfg = model_config(model, **overrides)
    if dtype != "model":
        cfg = cfg.replace(dtype=dtype)
    if cfg.dtype not in RTOL:
        raise ValueError(f"dtype={dtype!r}: compare in one of {', '.join(RTOL)} or 'model'")
    rtol = RTOL[cfg.dtype] if rtol is None else rtol
    hf = str(Path(model).resolve()) if _is_hf_folder(model) else None
    ref = _reference(cfg, seed, grads, hf)
    got = run_layout(cfg, layout, params=_hf_params(hf, cfg) if hf else None, seed=seed,
                     grads=grads, partitioner=partitioner)
    how = "" if partitioner == "shard_map" else f" ({partitioner})"
    where = f"{cfg.name} on {layout}{how} (compared in {cfg.dtype}) differs from single: "
    assert_trees_close({"output": ref["y"]}, {"output": got["y"]}, rtol, where)
    if grads:
        assert_trees_close(ref["grads"], got["grads"], rtol, where + "gradient ")
    return got


# ------------------------------------------------------------------------------ collectives


@dataclass(frozen=True)
class CollectiveRecord:
    """Collectives of one kind in a compiled program, per device: `count` executions per step of
    `op` over replica groups of `group_size` devices, each on a buffer of `payload_bytes` (the
    gathered result of an all-gather, the operands of every other op) of `dtype`, operand `shape`."""

    op: str
    group_size: int
    groups: tuple[tuple[int, ...], ...]
    count: int
    payload_bytes: int
    shape: tuple[int, ...]
    dtype: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def compiled_text(cfg: ModelConfig, layout: str, mode: str = "forward") -> str:
    """The HLO text of the compiled program of `mode` (forward pass, whole training step with
    AdamW, prefill, or one decode step), compiled from abstract arguments (nothing allocated)."""
    from helix_jax.layouts import parse_layout
    from helix_jax.model import Sharded

    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    from helix_jax.analysis.costmodel.compiler import compile_program, compile_step

    sharded = Sharded.build(cfg, parse_layout(layout))
    compile_ = compile_program if mode in ("forward", "train") else compile_step
    return compile_(sharded, mode).as_text()


def collectives(model: str | Path | ModelConfig, layout: str, *, mode: str = "forward",
                **overrides) -> list[CollectiveRecord]:
    """The collectives of `model` on `layout` (compiled program of `mode`), grouped by op,
    groups, shape and dtype, in program order of first appearance."""
    from helix_jax.analysis import collectives as read_collectives

    cfg = model_config(model, **overrides)
    counts: dict[tuple, int] = {}
    proto: dict[tuple, Any] = {}
    for c in read_collectives(compiled_text(cfg, layout, mode)):
        groups = c.replica_groups or tuple((s, t) for s, t in c.source_target_pairs)
        key = (c.op, c.group_size, groups, c.operand_shapes[0] if c.operand_shapes else (),
               c.dtype)
        counts[key] = counts.get(key, 0) + c.trip_count
        proto.setdefault(key, c)
    return [CollectiveRecord(op, g, groups, counts[key], proto[key].payload_bytes, shape, dt)
            for key in counts for op, g, groups, shape, dt in [key]]


def _table(rows: Iterable[Mapping[str, Any]], keys: Sequence[str]) -> str:
    rows = list(rows)
    if not rows:
        return "  (none)"
    cells = [[str(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    return "\n".join("  " + "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()
                     for vals in [list(keys), *cells])


def assert_collectives(model: str | Path | ModelConfig, layout: str,
                       expected: Sequence[Mapping[str, Any]], *, mode: str = "forward",
                       **overrides) -> list[CollectiveRecord]:
    """Assert that the compiled program holds exactly the `expected` collectives.

    Each expected row is a mapping with `count` (executions per step, summed over the program's
    loops) and any of `op`, `group_size`, `payload_bytes`, `shape`, `dtype`, `groups`; the
    program's collectives are summed over the keys the rows use and must equal them as a
    multiset (nothing missing, nothing extra). Prints both tables on failure. Returns the
    records."""
    fields = list(CollectiveRecord.__dataclass_fields__)
    unknown = {k for row in expected for k in row} - set(fields)
    if unknown or any("count" not in row for row in expected):
        raise ValueError(f"unknown keys in expected collectives: {', '.join(sorted(unknown))}; "
                         f"each row needs `count` and any of {', '.join(fields)}" if unknown else
                         "every expected row needs a `count`")
    keys = sorted({k for row in expected for k in row if k != "count"}, key=fields.index)
    records = collectives(model, layout, mode=mode, **overrides)

    def norm(v):
        return tuple(map(norm, v)) if isinstance(v, list | tuple) else v

    got: Counter = Counter()
    for r in records:
        got[tuple(norm(getattr(r, k)) for k in keys)] += r.count
    want: Counter = Counter()
    for row in expected:
        want[tuple(norm(row[k]) for k in keys)] += int(row["count"])
    if got != want:
        def as_rows(c: Counter) -> list[dict]:
            return [dict(zip(keys, k), count=n) for k, n in sorted(c.items(), key=str)]
        raise AssertionError(
            f"collectives of {model_config(model, **overrides).name} on {layout} ({mode}) differ "
            f"from the expected table\nexpected:\n{_table(as_rows(want), [*keys, 'count'])}\n"
            f"compiled program:\n{_table(as_rows(got), [*keys, 'count'])}")
    return records
