"""Layouts: how one model is split over a device mesh, as data.

A `Layout` is a mesh (shape + axis names), the rules that map the model's logical axis names
(batch, heads, head_dim, mlp, expert, layers, ...) to mesh axes, layout options (attention core,
microbatches, ...) and the order in which mesh positions are numbered onto GPUs. This module is the one
place where logical names meet mesh axes. Layouts are parsed from strings such as
`helix:m=4,n=4,core=seq_a2a` (see `parse_layout`, `LAYOUTS`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from helix_jax.config import ModelConfig
from helix_jax.enums import ContextAttention, Core, Placement, Schedule, choices
from helix_jax.errors import quote, unknown_name
from helix_jax.limits import MAX_DEVICES as MAX_OPTION
from helix_jax.routing import check_moe

CORES = choices(Core)
CONTEXT_ATTENTION = choices(ContextAttention)
SCHEDULES = choices(Schedule)  # pipeline schedules; 1f1b with virtual=V > 1 is interleaved
PLACEMENTS = choices(Placement)


@dataclass(frozen=True)
class Layout:
    """A mesh plus logical->mesh axis rules; `rules` maps a logical name to a tuple of mesh axes."""

    kind: str
    axis_names: tuple[str, ...]
    mesh_shape: tuple[int, ...]
    rules: dict[str, tuple[str, ...]]
    options: dict[str, Any] = field(default_factory=dict)
    # Axis order, slowest first, in which mesh positions are numbered onto GPUs.
    placement: tuple[str, ...] = ()

    def __hash__(self) -> int:
        """Layouts key caches and sets: the spec names the kind and every option, and the rules
        and placement follow from them."""
        return hash(self.spec)

    @property
    def devices(self) -> int:
        return math.prod(self.mesh_shape)

    @property
    def axis_sizes(self) -> dict[str, int]:
        return dict(zip(self.axis_names, self.mesh_shape))

    @property
    def spec(self) -> str:
        """The canonical string that parses back to this layout."""
        opts = ",".join(f"{k}={_fmt(v)}" for k, v in self.options.items())
        return f"{self.kind}:{opts}" if opts else self.kind

    def mesh_axes(self, *logical: str | None) -> tuple[str, ...]:
        """The mesh axes that the logical names map to, in mesh order, without repeats."""
        axes = [a for name in logical if name is not None for a in self.rules.get(name, ())]
        return tuple(a for a in self.axis_names if a in axes)

    def size(self, *logical: str | None) -> int:
        """How many shards the logical names are split into."""
        return math.prod(self.axis_sizes[a] for a in self.mesh_axes(*logical))

    def size_of(self, axes) -> int:
        """How many devices a set of mesh axes spans."""
        return math.prod(self.axis_sizes[a] for a in axes)

    def pspec(self, logical: tuple[str | None, ...], first: tuple[int, ...] = ()):
        """The PartitionSpec of an array whose dimensions carry these logical names. A mesh axis
        goes to the first dimension that names it, dimensions in `first` served first."""
        from jax.sharding import PartitionSpec as P

        order = list(first) + [i for i in range(len(logical)) if i not in first]
        used: set[str] = set()
        dims: list = [None] * len(logical)
        for i in order:
            axes = tuple(a for a in self.mesh_axes(logical[i]) if a not in used)
            used.update(axes)
            dims[i] = None if not axes else axes[0] if len(axes) == 1 else axes
        return P(*dims)

    def make_mesh(self, devices=None):
        """A jax Mesh (Auto axes) over the first `self.devices` devices, numbered by `placement`."""
        import jax
        import numpy as np

        from helix_jax.devices import devices_for

        available = devices_for(self.devices) if devices is None else list(devices)
        if len(available) < self.devices:
            raise ValueError(
                f"layout {self.spec} needs {self.devices} devices but jax sees {len(available)}; "
                f"run through the `helix` command (it sets up host devices) or call "
                f"helix_jax.devices.ensure_host_devices({self.devices}) before jax starts")
        order = self.placement_order()
        grid = np.array(available[: self.devices], dtype=object).reshape(
            [self.axis_sizes[a] for a in order])
        grid = grid.transpose([order.index(a) for a in self.axis_names])
        axis_types = (jax.sharding.AxisType.Auto,) * len(self.axis_names)
        return jax.sharding.Mesh(grid, self.axis_names, axis_types=axis_types)

    def placement_order(self) -> tuple[str, ...]:
        """Mesh axes, slowest first, in which mesh positions are numbered onto GPUs (which GPUs
        share a node is the hardware's to say: `analysis.costmodel.topology`)."""
        return self.placement or self.axis_names

    def validate(self, cfg: ModelConfig, devices: int | None = None,
                 even_stages: bool = True) -> None:
        """Raise a ValueError naming the numbers when `cfg` cannot run on this layout.
        `even_stages=False` lets the layers fall unevenly on the pipeline's model chunks (what a
        composed projection prices: its heaviest stage), as Megatron's uneven stages do."""
        if devices is not None and devices != self.devices:
            raise ValueError(f"layout {self.spec} is a {self.devices}-device mesh "
                             f"{self.axis_sizes} but {devices} devices were given")
        if not even_stages:
            chunks = self.size("layers") * self.options.get("virtual", 1)
            cfg = cfg.replace(n_layers=-(-cfg.n_layers // chunks) * chunks)
        checks = [
            ("n_heads", cfg.n_heads, "heads"), ("head_dim", cfg.head_dim, "head_dim"),
            ("batch", cfg.batch, "batch"), ("n_layers", cfg.n_layers, "layers"),
            ("seq", cfg.seq, "seq"),
        ]
        if not cfg.is_moe or cfg.first_dense_layers:
            checks.append(("d_ff", cfg.d_ff, "mlp"))
        if cfg.is_moe:
            checks.append(("n_experts", cfg.n_experts, "expert"))
            checks.append(("moe_d_ff" if cfg.moe_d_ff else "d_ff", cfg.expert_d_ff,
                           "expert_mlp"))
        if cfg.shared_d_ff:
            checks.append(("n_shared_experts x moe_d_ff", cfg.shared_d_ff, "mlp"))
        if cfg.vocab:
            checks.append(("vocab", cfg.vocab, "vocab"))
        for what, value, logical in checks:
            parts = self.size(logical)
            if value % parts:
                raise ValueError(
                    f"{cfg.name} on {self.spec}: {what}={value} is not divisible by the {parts} "
                    f"shards of '{logical}' (mesh axes {self.mesh_axes(logical)}); "
                    f"choose a {what} that is a multiple of {parts} or another layout")
        _check_blocks(self, cfg)
        for check in _EXTRA_CHECKS.get(self.kind, ()):
            check(self, cfg)
        if cfg.is_moe:
            check_moe(cfg, self)

    def for_model(self, cfg: ModelConfig) -> Layout:
        """This layout as `cfg`'s model runs on it: K/V heads split like the query heads while
        the head shards divide them, else replicated (each shard projects the one K/V head its
        query heads use, as Megatron does for tp > n_kv_heads). The spec is unchanged."""
        if "kv_heads" not in self.rules or cfg.kv_heads % self.size("heads") == 0:
            return self
        rules = {k: v for k, v in self.rules.items() if k != "kv_heads"}
        return replace(self, rules=rules)

    def describe(self) -> str:
        mesh = " x ".join(f"{a}={n}" for a, n in self.axis_sizes.items())
        return f"{self.spec} [{mesh}]"


def _fmt(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


# ----------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class LayoutKind:
    """A family of layouts: its options with defaults, and a builder from options to a Layout."""

    name: str
    summary: str
    defaults: dict[str, Any]
    build: Callable[..., Layout]
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _with_data(dp: int, axes: tuple[str, ...], shape: tuple[int, ...]):
    return (("data",) + axes, (dp,) + shape) if dp > 1 else (axes, shape)


def _single(**opts) -> Layout:
    return Layout("single", ("data",), (1,), {}, opts)


def _helix(kind: str = "helix", **opts) -> Layout:
    names, shape = _with_data(opts["dp"], ("head", "dim"), (opts["n"], opts["m"]))
    rules = {"batch": ("data",), "heads": ("head",), "kv_heads": ("head",), "head_dim": ("dim",),
             "mlp": ("head", "dim"), "expert": ("head", "dim"), "vocab": ("head", "dim")}
    return Layout(kind, names, shape, rules, opts)


def _helix_ep(**opts) -> Layout:
    return _helix("helix-ep", **opts)


def expert_ranks(dp: int, cp: int, ep: int) -> int:
    """How many data-parallel ranks an expert-parallel group of `ep` takes (with all `cp`
    context-parallel ranks): a one-line error when `ep` cannot be drawn so."""
    if ep == 1:
        return 1
    if ep % cp or dp % (ep // cp):
        raise ValueError(f"layout tp-pp: the ep={ep} expert-parallel ranks are drawn from the "
                         f"dp x cp = {dp} x {cp} data- and context-parallel ranks: all {cp} "
                         f"context ranks times k data ranks, k dividing dp={dp}; choose ep = "
                         f"{cp} x k")
    return ep // cp


def overlap_without_sp(layout: Layout) -> bool:
    """tp_overlap=true on tensor-parallel collectives that sequence parallelism does not split:
    priced as hidden, but the runtime runs collective matmuls only under sp=true."""
    o = layout.options
    return bool(o.get("tp_overlap")) and o.get("tp", 1) > 1 and not o.get("sp")


def _tp_pp(**opts) -> Layout:
    cp, ep = opts["cp"], opts["ep"]
    e = expert_ranks(opts["dp"], cp, ep)
    lead = [(a, n) for a, n in (("data", opts["dp"] // e), ("expert", e)) if n > 1]
    inner = [("stage", opts["pp"])] + ([("context", cp)] if cp > 1 else []) + [("tensor", opts["tp"])]
    names, shape = (tuple(x) for x in zip(*(lead + inner)))
    rules = {"batch": tuple(a for a, _ in lead), "layers": ("stage",), "heads": ("tensor",),
             "kv_heads": ("tensor",), "mlp": ("tensor",),
             "expert_mlp": ("tensor",), "vocab": ("tensor",)}
    if cp > 1:  # context parallel ranks between the stages and the tensor ranks
        rules["cp_seq"] = ("context",)
    if ep > 1:  # experts over data ranks (and the context ranks): all-to-all among them
        rules["expert"] = ("expert",) * (e > 1) + ("context",) * (cp > 1)
    # options added after the paper's baseline stay out of the spec at their defaults
    quiet = {"cp": cp == 1, "attention": cp == 1, "ep": ep == 1}
    opts = {k: v for k, v in opts.items() if not quiet.get(k)}
    if opts["sp"]:
        rules["act_seq"] = ("tensor",)
    placement = ()
    if opts["place"] == "stage-inner":  # the two stages of a TP rank share a node
        placement = tuple(a for a in names if a != "stage") + ("stage",)
    return Layout("tp-pp", names, shape, rules, opts, placement=placement)


def _cp(**opts) -> Layout:
    names, shape = _with_data(opts["dp"], ("context",), (opts["cp"],))
    return Layout("cp", names, shape, {"batch": ("data",), "cp_seq": ("context",)}, opts)


def _ep(**opts) -> Layout:
    names, shape = _with_data(opts["dp"], ("expert",), (opts["ep"],))
    rules = {"batch": ("data", "expert"), "expert": ("expert",)}
    return Layout("ep", names, shape, rules, opts)


def _dp(**opts) -> Layout:
    rules = {"batch": ("data",)}
    if opts["fsdp"]:  # parameters stored split along `embed`, gathered one layer at a time
        rules["fsdp"] = ("data",)
        rules["embed"] = ("data",)
    return Layout("dp", ("data",), (opts["dp"],), rules, opts)


def _kvp(**opts) -> Layout:
    names, shape = _with_data(opts["dp"], ("tensor", "kvp"), (opts["tp"], opts["kvp"]))
    model = ("tensor", "kvp")
    rules = {"batch": ("data",), "heads": ("tensor",), "kv_heads": ("tensor",),
             "kv_seq": ("kvp",), "mlp": model,
             "expert": model, "vocab": model}
    return Layout("kvp", names, shape, rules, opts)


LAYOUTS: dict[str, LayoutKind] = {k.name: k for k in (
    LayoutKind("single", "one device, no sharding: the reference every layout is checked against",
               {}, _single),
    LayoutKind("helix", "two-level attention partitioning: heads split n ways x head dim m ways "
               "(the paper's method); FFN 16-way tensor parallel",
               {"m": 4, "n": 4, "core": "score_psum", "dp": 1}, _helix, {"core": CORES}),
    LayoutKind("tp-pp", "Megatron tensor parallelism x GPipe pipeline (the paper's baseline)",
               {"tp": 8, "pp": 2, "microbatches": 4, "sp": False, "dp": 1, "place": "tensor-inner",
                "schedule": "gpipe", "virtual": 1, "tp_overlap": False, "cp": 1,
                "attention": "ring", "ep": 1},
               _tp_pp, {"place": PLACEMENTS, "schedule": SCHEDULES,
                        "attention": CONTEXT_ATTENTION}),
    LayoutKind("cp", "context parallelism: every layer's sequence split over cp devices (two "
               "chunks each, balanced under the causal mask), keys and values passed around a "
               "ring (attention=ring) or all-gathered (attention=allgather); weights replicated",
               {"cp": 4, "attention": "ring", "dp": 1}, _cp,
               {"attention": CONTEXT_ATTENTION}),
    LayoutKind("ep", "expert parallelism: one expert per device, tokens moved by all-to-all; "
               "attention data parallel", {"ep": 16, "chunks": 1, "dp": 1}, _ep),
    LayoutKind("helix-ep", "helix attention with the experts spread one per device; tokens stay "
               "replicated, so dispatch is a local selection and combine a reduction",
               {"m": 4, "n": 4, "core": "score_psum", "dp": 1}, _helix_ep, {"core": CORES}),
    LayoutKind("dp", "data parallelism: batch split over all devices, weights replicated "
               "(fsdp=true shards them)", {"dp": 16, "fsdp": False}, _dp),
    LayoutKind("kvp", "KV-sequence parallelism: keys and values (and the KV cache) split along "
               "the sequence over kvp devices, heads over tp; partial outputs combined exactly by "
               "their log-sum-exp; FFN tensor parallel over all of them",
               {"kvp": 16, "tp": 1, "dp": 1}, _kvp),
)}


def _check_blocks(layout: Layout, cfg: ModelConfig) -> None:
    """What the model's blocks ask of any layout: K/V heads that the head shards can share out,
    whole rotary pairs on each head-dim shard, leading dense layers outside a pipeline."""
    shards, G = layout.size("heads"), cfg.kv_heads
    if G % shards and shards % G:
        raise ValueError(f"{cfg.name} on {layout.spec}: n_kv_heads={G} and the {shards} head "
                         f"shards do not divide one another, so a shard's query heads would "
                         f"need part of a K/V head; choose a head split that divides or is a "
                         f"multiple of {G}")
    m = layout.size("head_dim")
    if cfg.position == "rope" and (cfg.head_dim // m) % 2:
        raise ValueError(f"{cfg.name} on {layout.spec}: rotary positions need whole pairs of "
                         f"head dimensions on each of the {m} head-dim shards, but head_dim="
                         f"{cfg.head_dim} leaves {cfg.head_dim // m}; use m dividing "
                         f"{cfg.head_dim // 2}")
    if cfg.first_dense_layers and layout.size("layers") > 1:
        raise ValueError(f"{cfg.name} on {layout.spec}: first_dense_layers needs the whole "
                         f"model on each pipeline stage; use pp=1 (the leading dense layers are "
                         f"a stack of their own)")


def _check_seq_a2a(layout: Layout, cfg: ModelConfig) -> None:
    m = layout.size("head_dim")
    if layout.options.get("core") == "seq_a2a" and cfg.seq % m:
        raise ValueError(f"{cfg.name} on {layout.spec}: core=seq_a2a splits the sequence {m} ways "
                         f"but seq={cfg.seq} is not divisible by {m}")


def _check_pipeline(layout: Layout, cfg: ModelConfig) -> None:
    mb = layout.options["microbatches"]
    per_replica = cfg.batch // layout.size("batch")
    if mb < 1 or per_replica % mb:
        raise ValueError(f"{cfg.name} on {layout.spec}: the batch per data replica ({per_replica}) "
                         f"is not divisible by microbatches={mb}; choose microbatches dividing it")
    pp, virtual = layout.size("layers"), layout.options["virtual"]
    if virtual > 1 and layout.options["schedule"] != "1f1b":
        raise ValueError(f"{cfg.name} on {layout.spec}: virtual={virtual} (interleaved stages) "
                         f"needs schedule=1f1b")
    if cfg.n_layers % (pp * virtual):
        raise ValueError(f"{cfg.name} on {layout.spec}: n_layers={cfg.n_layers} is not divisible "
                         f"into pp x virtual = {pp * virtual} model chunks")
    if layout.options["sp"] and cfg.seq % layout.size("act_seq"):
        raise ValueError(f"{cfg.name} on {layout.spec}: sequence parallelism splits seq={cfg.seq} "
                         f"{layout.size('act_seq')} ways; it must divide evenly")


def _check_context(layout: Layout, cfg: ModelConfig) -> None:
    K = layout.size("cp_seq")
    if K > 1 and cfg.seq % (2 * K * layout.size("act_seq")):
        sp = layout.size("act_seq")
        raise ValueError(f"{cfg.name} on {layout.spec}: context parallelism cuts seq={cfg.seq} "
                         f"into 2 x cp = {2 * K} chunks" + (f", each split {sp} ways by sp"
                                                             if sp > 1 else "")
                         + f"; choose a seq divisible by {2 * K * sp}")


def _check_expert_split(layout: Layout, cfg: ModelConfig) -> None:
    if layout.size("expert") > 1 and not cfg.is_moe:
        raise ValueError(f"{cfg.name} on {layout.spec}: ep={layout.size('expert')} splits "
                         f"experts, but {cfg.name} is a dense model; drop ep or use a MoE model")


def _check_moe(layout: Layout, cfg: ModelConfig) -> None:
    if not cfg.is_moe:
        raise ValueError(f"layout {layout.kind} places experts, but {cfg.name} is a dense model; "
                         f"use a MoE model (e.g. tiny-moe) or the helix/dp layouts")


def _check_kvp(layout: Layout, cfg: ModelConfig) -> None:
    k = layout.size("kv_seq")
    if cfg.seq % k:
        raise ValueError(f"{cfg.name} on {layout.spec}: the sequence ({cfg.seq}) is split "
                         f"round-robin over kvp={k} devices; choose a seq divisible by {k}")


_EXTRA_CHECKS: dict[str, tuple[Callable[[Layout, ModelConfig], None], ...]] = {
    "kvp": (_check_kvp,),
    "helix": (_check_seq_a2a,),
    "helix-ep": (_check_seq_a2a, _check_moe),
    "tp-pp": (_check_pipeline, _check_context, _check_expert_split),
    "cp": (_check_context,),
    "ep": (_check_moe,),
}


def _convert(kind: LayoutKind, key: str, text: str) -> Any:
    default = kind.defaults[key]
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(text)
    except ValueError:
        raise ValueError(f"layout {kind.name}: option {key}={quote(text)} must be "
                         f"{type(default).__name__} (default {_fmt(default)})") from None
    if key in kind.choices and text not in kind.choices[key]:
        raise ValueError(f"layout {kind.name}: {key}={quote(text)} is not one of "
                         f"{', '.join(kind.choices[key])}")
    return text


def parse_layout(spec: str) -> Layout:
    """Parse `kind[:key=value,...]`, e.g. `helix:m=4,n=4,core=seq_a2a`, into a Layout."""
    name, _, rest = spec.strip().partition(":")
    if name not in LAYOUTS:
        raise ValueError(f"{unknown_name('layout', name, LAYOUTS)}; `helix layouts` lists them")
    kind = LAYOUTS[name]
    opts = dict(kind.defaults)
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"layout {name}: cannot read option {quote(item)}: write key=value "
                             f"(`helix layouts` lists the options)")
        if key not in kind.defaults:
            raise ValueError(f"layout {name}: {unknown_name('option', key, kind.defaults)}; "
                             f"`helix layouts` lists the options")
        opts[key] = _convert(kind, key, value)
    for key, value in opts.items():
        if isinstance(value, int) and not isinstance(value, bool) and not 1 <= value <= MAX_OPTION:
            raise ValueError(f"layout {name}: {key}={_fmt(value)[:12]} must be between 1 and "
                             f"{MAX_OPTION:,}")
    layout = kind.build(**opts)
    if layout.devices > MAX_OPTION:
        raise ValueError(f"layout {layout.spec}: {layout.devices:,} devices, more than the "
                         f"{MAX_OPTION:,} any layout may have")
    return layout
