"""Put a model on a layout: parameter shardings, sharded initialisation, the forward program.

Parameters travel as a plain nested dict of float32 arrays (what optax, orbax and the npz files
see); `logical_axes` gives the matching tree of logical axis names, and the layout maps those to
PartitionSpecs. Two partitioners run the same modules:

  shard_map  (default) the forward pass is one `jax.shard_map` over the whole mesh, so every
             collective in the program is one the model asked for through `Comm`;
  gspmd      the modules run on whole arrays under `jax.jit` with the layout's parameter and input
             shardings and sharding constraints at the points the modules name (`Comm.constrain`);
             XLA's SPMD partitioner chooses every collective. Pipelines (their schedule is
             hand-written) and the KV-cache steps (prefill, decode) stay shard_map.

What a prefill or decode step (and a forward with `weights="float8"`) reads are the serving
weights (`serving_params`): copies in the model's dtype, or with `weights="float8"` the matmul
weights as float8_e4m3fn values and per-output-channel scales (nn/float8.py), sharded by the
same logical axes (`serving_specs`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from helix_jax import params as param_tree
from helix_jax.comm import Comm
from helix_jax.config import ModelConfig
from helix_jax.enums import AttentionKernel, Remat, Weights, choices
from helix_jax.gspmd import check_partitioner
from helix_jax.layouts import Layout
from helix_jax.nn import float8
from helix_jax.nn.stats import combine_stats
from helix_jax.nn.transformer import Transformer
from helix_jax.parallel import context
from helix_jax.params import Params, graphdef, logical_axes, param_shapes

STAT_KEYS_MOE = ("dropped", "routed", "aux_loss", "z_loss")
REMAT = choices(Remat)


def _entry(axes: tuple[str, ...]):
    """A PartitionSpec entry for one dimension split over `axes` (None when over none)."""
    return None if not axes else axes if len(axes) > 1 else axes[0]


def _spec_tree(tree, fn):
    return jax.tree.map(fn, tree, is_leaf=lambda t: isinstance(t, tuple))


@dataclass(frozen=True)
class Sharded:
    """A model config on a layout and a concrete mesh.

    With `batch_chunks` K > 1 the input and output rest spread over every device (batch split over
    all mesh axes that the sequence split does not use) and the program walks the batch in K chunks:
    each chunk is all-gathered into the layout's working form, run, and each device keeps its own
    rows of the output. That is how a layout whose activations are replicated (helix, tp-pp) fits
    the paper's 1024 x 10000 batch in 80 GB; the gather is real traffic and is counted.
    """

    cfg: ModelConfig
    layout: Layout
    mesh: Mesh
    batch_chunks: int = 1
    remat: str = "none"  # activation recompute in training: none | selective | full
    partitioner: str = "shard_map"  # shard_map (hand-written collectives) | gspmd (XLA's)
    attention_kernel: str = "auto"  # ordinary attention: auto | fused call | blockwise scan
    weights: str = "model"  # serving weights: the model's dtype | float8 (nn/float8.py)

    @classmethod
    def build(cls, cfg: ModelConfig, layout: Layout, devices=None,
              batch_chunks: int = 1, remat: str = "none",
              partitioner: str = "shard_map", attention_kernel: str = "auto",
              weights: str = "model") -> Sharded:
        layout.validate(cfg)
        if weights not in tuple(Weights):
            raise ValueError(f"weights={weights!r} is not one of {', '.join(Weights)}")
        if remat not in REMAT:
            raise ValueError(f"remat={remat!r} is not one of {', '.join(REMAT)}")
        check_partitioner(layout, partitioner)
        layout = layout.for_model(cfg)
        if attention_kernel not in tuple(AttentionKernel):
            raise ValueError(f"attention_kernel={attention_kernel!r} is not one of "
                             f"{', '.join(AttentionKernel)}")
        sharded = cls(cfg, layout, layout.make_mesh(devices), batch_chunks, remat, partitioner,
                      attention_kernel, weights)
        rows = cfg.batch // layout.size(*sharded.rest_axes) if sharded.rest_axes else cfg.batch
        if batch_chunks < 1 or rows % batch_chunks:
            shards = layout.size(*sharded.rest_axes) if sharded.rest_axes else 1
            raise ValueError(f"{cfg.name} on {layout.spec}: the batch ({cfg.batch}) spread over "
                             f"{shards} devices leaves {rows} rows each, not divisible into "
                             f"batch_chunks={batch_chunks}")
        if batch_chunks > 1 and cfg.batch // layout.size("batch") % batch_chunks:
            raise ValueError(f"{cfg.name} on {layout.spec}: the batch per data replica "
                             f"({cfg.batch // layout.size('batch')}) is not divisible into "
                             f"batch_chunks={batch_chunks}")
        microbatches = layout.options.get("microbatches", 1) if layout.mesh_axes("layers") else 1
        per_chunk = cfg.batch // layout.size("batch") // batch_chunks
        if per_chunk % microbatches:
            raise ValueError(f"{cfg.name} on {layout.spec}: a batch chunk of {per_chunk} sequences "
                             f"cannot be split into microbatches={microbatches}")
        return sharded

    @property
    def rest_axes(self) -> tuple[str, ...]:
        """Mesh axes the input's batch is split over at rest (in mesh order)."""
        working = self.layout.mesh_axes("batch")
        if self.batch_chunks == 1:
            return working
        seq_axes = set(self.seq_axes)
        axes: list[str] = []
        for a in self.layout.axis_names:
            trial = axes + [a]
            if a in working or (a not in seq_axes
                                and self.cfg.batch % (self.layout.size_of(trial) * self.batch_chunks) == 0):
                axes = trial
        return tuple(axes)

    @property
    def spread_axes(self) -> tuple[str, ...]:
        """Axes the input is split over at rest but replicated over while the model runs."""
        working = set(self.layout.mesh_axes("batch"))
        return tuple(a for a in self.rest_axes if a not in working)

    @property
    def gspmd(self) -> bool:
        return self.partitioner == "gspmd"

    @property
    def comm(self) -> Comm:
        rules = {**self.layout.rules, "spread": self.spread_axes}
        return Comm(dataclasses.replace(self.layout, rules=rules), remat=self.remat,
                    attention_kernel=self.attention_kernel,
                    mesh=self.mesh if self.gspmd else None)

    @property
    def param_specs(self) -> Params:
        return _spec_tree(logical_axes(self.cfg), self.layout.pspec)

    @property
    def param_shardings(self) -> Params:
        return jax.tree.map(lambda s: NamedSharding(self.mesh, s), self.param_specs)

    @property
    def serving_specs(self) -> Params:
        """The serving weights' specs: the parameters' own, or under float8 each matmul weight's
        as Float8Weight(q=its spec, scale=the spec of its output channels)."""
        if self.weights == Weights.MODEL:
            return self.param_specs
        return _spec_tree(float8.served_axes(logical_axes(self.cfg)), self.layout.pspec)

    @property
    def serving_shardings(self) -> Params:
        return jax.tree.map(lambda s: NamedSharding(self.mesh, s), self.serving_specs)

    def _serve(self, params: Params) -> Params:
        """float32 masters -> the serving weights (the model's dtype, or float8)."""
        dt = jnp.dtype(self.cfg.dtype)
        if self.weights == Weights.FLOAT8:
            return float8.quantize_params(params, logical_axes(self.cfg), dt)
        return jax.tree.map(lambda a: a.astype(dt), params)

    def serving_params(self, params: Params) -> Params:
        """The weights a prefill or decode step reads, on their shards, from the float32 masters:
        copies in the model's dtype, or float8 (a no-op for weights that are served already, such
        as a float32 model's masters)."""
        served = jax.tree.leaves(self.abstract_serving_params())
        if len(jax.tree.leaves(params)) == len(served) and all(
                a.dtype == s.dtype for a, s in zip(jax.tree.leaves(params), served)):
            return params
        return jax.jit(self._serve, out_shardings=self.serving_shardings)(params)

    def abstract_serving_params(self) -> Params:
        """`serving_params` as ShapeDtypeStructs with their shardings (nothing allocated)."""
        shapes = jax.eval_shape(self._serve, param_shapes(self.cfg))
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, self.serving_shardings)

    @property
    def x_spec(self) -> P:
        """The input's and output's sharding at rest."""
        return P(_entry(self.rest_axes), _entry(self.seq_axes), None)

    @property
    def seq_axes(self) -> tuple[str, ...]:
        """Mesh axes the sequence of the residual stream is split over: context parallelism's
        (the chunks in shard order, see `parallel.context`), then sequence parallelism's."""
        return self.layout.mesh_axes(context.AXIS, "act_seq")

    @property
    def context_shards(self) -> int:
        return self.layout.size(context.AXIS)

    @property
    def x_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, self.x_spec)

    @property
    def input_spec(self) -> P:
        """The model input's sharding: embeddings like `x_spec`; tokens [B, S] by batch only (the
        embedding needs whole sequences; under sequence parallelism it scatters them)."""
        if self.cfg.vocab or self.context_shards > 1:  # each context shard picks its chunks
            return P(self.x_spec[0], *(None,) * (1 if self.cfg.vocab else 2))
        return self.x_spec

    @property
    def input_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, self.input_spec)

    @property
    def stats_specs(self) -> dict[str, P]:
        keys = STAT_KEYS_MOE if self.cfg.is_moe else ()
        return {k: self.layout.pspec(("layers",)) for k in keys}

    def init(self, seed: int = 0) -> Params:
        """Parameters initialised from `seed`, on this layout.

        The values do not depend on the layout (jax's random bits are sharding-invariant), so every
        layout starts from the same model. A model of at most SMALL_INIT_BYTES is drawn on one
        device by a program that depends on the model alone, then placed: the random-number
        program costs more to compile than a small model's forward pass, and this way one
        compilation serves every layout. A larger model is drawn directly in its shards, so it
        never sits whole on one device.
        """
        if param_tree.param_bytes(self.cfg) <= SMALL_INIT_BYTES:
            return self.place(param_tree.init_on_one_device(self.cfg.replace(batch=1), seed))

        def create():
            return nnx.to_pure_dict(nnx.state(Transformer(self.cfg, rngs=nnx.Rngs(seed))))
        return jax.jit(create, out_shardings=self.param_shardings)()

    def load_hf(self, folder) -> Params:
        """A Hugging Face checkpoint's weights (helix_jax.hf), each device's shards read from
        the files: the whole model never sits on one device."""
        from helix_jax.hf.weights import load_params

        return load_params(folder, self.cfg, param_shapes(self.cfg), self.param_shardings)

    def place(self, params: Params) -> Params:
        """Move host or differently-sharded parameters into this layout's shards."""
        return jax.device_put(params, self.param_shardings)

    def local_forward(self, params: Params, x: jax.Array):
        """The per-device program: this device's parameter shards and input shard."""
        model, comm = nnx.merge(graphdef(self.cfg), params), self.comm
        if self.batch_chunks == 1 and not self.spread_axes:
            return model(x, comm)
        rows = x.shape[0] // self.batch_chunks

        def chunk(_, xc):  # xc: this device's rows of one chunk
            y, stats = model(comm.all_gather(xc, "spread", axis=0, invariant=True), comm)
            mine = jax.lax.dynamic_slice_in_dim(y, comm.index("spread") * rows, rows, axis=0)
            return None, (mine, stats)

        _, (y, stats) = jax.lax.scan(chunk, None, x.reshape(self.batch_chunks, rows, *x.shape[1:]))
        return y.reshape(x.shape[0], *y.shape[2:]), combine_stats(stats)

    def global_forward(self, params: Params, x: jax.Array):
        """The gspmd program: whole arrays, the layout's shardings as constraints. With batch
        chunks, chunk c holds rows c, c + K, ... of each device's rows at rest (as under
        shard_map), gathered into the layout's working sharding, and each device keeps its rows
        of the output. The chunk is picked along an unsharded axis: a reshape that moved the
        sharded one would make XLA replicate the whole batch."""
        model, comm = nnx.merge(graphdef(self.cfg), params), self.comm
        if self.batch_chunks == 1 and not self.spread_axes:
            return model(x, comm)
        K, n = self.batch_chunks, self.layout.size_of(self.rest_axes)
        rows, tail = x.shape[0] // (n * K), x.shape[1:]

        def pin(t, *spec):
            return jax.lax.with_sharding_constraint(t, NamedSharding(self.mesh, P(*spec)))

        rest = self.input_spec[0]
        xs = pin(x.reshape(n, K, rows, *tail), rest, None, None, *self.input_spec[1:])
        dt = jnp.dtype(self.cfg.dtype)
        out = pin(jnp.zeros((n, K, rows, self.cfg.seq, self.cfg.d_model), dt),
                  rest, None, None, *self.x_spec[1:])

        def chunk(out, c):
            xc = jax.lax.dynamic_index_in_dim(xs, c, axis=1, keepdims=False)  # [n, rows, ...]
            xc = pin(xc.reshape(n * rows, *tail), *self.step_input_spec[:1],
                     *self.input_spec[1:])
            y, stats = model(xc, comm)
            y = pin(y.reshape(n, rows, *y.shape[1:]), rest, None, *self.x_spec[1:])
            return jax.lax.dynamic_update_index_in_dim(out, y.astype(dt), c, axis=1), stats

        out, stats = jax.lax.scan(chunk, out, jnp.arange(K))
        return out.reshape(x.shape[0], *out.shape[3:]), combine_stats(stats)

    def forward_fn(self, per_replica: bool = False):
        """(params, x) -> (y, stats), jit-compiled; y [B, S, D] in the compute dtype. The
        parameters are the float32 masters, or under float8 weights the serving weights.

        `per_replica`: the parameters come as `replica_copies` (a leading axis, one copy per data
        replica): the gradient w.r.t. them is then each replica's own, not yet summed, so a
        training step can accumulate its chunks locally and reduce once (shard_map only)."""
        if self.gspmd:
            body = self.global_forward
        else:
            local = self.local_forward
            if per_replica:
                local = lambda p, x: self.local_forward(_own_copy(p), x)  # noqa: E731
            body = jax.shard_map(local, mesh=self.mesh,
                                 in_specs=(self._param_in_specs(per_replica), self.input_spec),
                                 out_specs=(self.x_spec, self.stats_specs))
        named = lambda tree: jax.tree.map(lambda s: NamedSharding(self.mesh, s), tree)  # noqa: E731
        return jax.jit(self._in_order(body), in_shardings=(named(self._param_in_specs(per_replica)),
                                           self.input_sharding),
                       out_shardings=(self.x_sharding, named(self.stats_specs)))

    # ------------------------------------------------------------------ data-parallel gradients

    @property
    def replica_axes(self) -> Params:
        """Per parameter, the data mesh axes it is replicated over (the batch's mesh axes its own
        spec does not use): the axes its gradient is summed over, once per training step."""
        batch = self.layout.mesh_axes("batch", context.AXIS)  # each holds its own tokens

        def axes(spec: P) -> tuple[str, ...]:
            used = {a for d in spec if d for a in (d if isinstance(d, tuple) else (d,))}
            return tuple(a for a in batch if a not in used)
        return jax.tree.map(axes, self.param_specs, is_leaf=lambda s: isinstance(s, P))

    def _replica_specs(self) -> Params:
        return jax.tree.map(lambda spec, axes: P(axes or None, *spec), self.param_specs,
                            self.replica_axes, is_leaf=lambda s: isinstance(s, P))

    def _param_in_specs(self, per_replica: bool) -> Params:
        return self._replica_specs() if per_replica else self.serving_specs

    def replica_copies(self, params: Params) -> Params:
        """Each parameter broadcast to [replicas, ...], one copy per data replica it is replicated
        over, sharded so that each device holds its replica's copy: no data moves."""
        def copy(p, spec, axes):
            n = self.layout.size_of(axes)
            return jax.lax.with_sharding_constraint(
                jnp.broadcast_to(p[None], (n, *p.shape)), NamedSharding(self.mesh, spec))
        return jax.tree.map(copy, params, self._replica_specs(), self.replica_axes,
                            is_leaf=lambda s: isinstance(s, P))

    def sum_replicas(self, grads: Params) -> Params:
        """Gradients w.r.t. `replica_copies` summed over the replicas, in the parameters' own
        shardings: one all-reduce over the data axes per parameter."""
        return jax.tree.map(
            lambda g, sh: jax.lax.with_sharding_constraint(g.sum(0), sh), grads,
            self.param_shardings)

    def local_token_loss(self, params: Params, tokens: jax.Array, labels: jax.Array):
        """Per device: tokens and labels [b, S] -> cross-entropy per token [b, S], and stats."""
        model, comm = nnx.merge(graphdef(self.cfg), params), self.comm
        h, stats = model(tokens, comm)
        return model.loss(h, labels, comm), stats

    def token_loss_fn(self, per_replica: bool = False):
        """(params, tokens, labels) -> (cross-entropy per token [B, S] float32, stats); models with
        a vocabulary only, one batch chunk. `per_replica` as in `forward_fn`."""
        if not self.cfg.vocab:
            raise ValueError(f"{self.cfg.name} has no vocabulary (vocab = 0): it has no token loss")
        if self.gspmd:
            return self.local_token_loss  # whole arrays: the step's jit partitions it
        spec = self.input_spec
        local = self.local_token_loss
        if per_replica:
            local = lambda p, t, lab: self.local_token_loss(_own_copy(p), t, lab)  # noqa: E731
        return self._in_order(jax.shard_map(
            local, mesh=self.mesh, in_specs=(self._param_in_specs(per_replica), spec, spec),
            out_specs=(P(spec[0], _entry(self.layout.mesh_axes(context.AXIS))),
                       self.stats_specs)))

    def _in_order(self, fn):
        """`fn` with its first output [B, S, ...] put back in sequence order: context
        parallelism leaves it shard after shard (`parallel.context`)."""
        shards = self.context_shards
        if shards == 1:
            return fn

        def ordered(*args):
            first, rest = fn(*args)
            return context.natural_order(first, shards), rest
        return ordered

    # ------------------------------------------------------------------ KV cache and steps

    CACHE_AXES = ("layers", "batch", "kv_seq", "kv_heads", "head_dim")

    @property
    def step_comm(self) -> Comm:
        """The layout as a prefill/decode step sees it: whole sequences (no sequence parallelism)
        and the input where the model works on it (no batch chunks)."""
        rules = {k: v for k, v in self.layout.rules.items() if k not in ("act_seq", context.AXIS)}
        return Comm(dataclasses.replace(self.layout, rules=rules),
                    attention_kernel=self.attention_kernel)

    @property
    def cache_axes(self) -> tuple[str, ...]:
        """The cache's logical axes. Where K/V heads are replicated over more head shards than
        there are of them, each head shard caches only the one K/V head its queries use: the
        cache then has one head slot per head shard, split over the `heads` axes."""
        if self.layout.mesh_axes("kv_heads") or not self.layout.mesh_axes("heads"):
            return self.CACHE_AXES
        return self.CACHE_AXES[:3] + ("heads",) + self.CACHE_AXES[4:]

    @property
    def cache_heads(self) -> int:
        """K/V head slots of the whole cache: n_kv_heads, or one per head shard (see above)."""
        if self.cache_axes == self.CACHE_AXES:
            return self.cfg.kv_heads
        return self.layout.size("heads")

    @property
    def cache_spec(self) -> P:
        return self.layout.pspec(self.cache_axes)

    def cache_shape(self, context: int) -> tuple[int, ...]:
        c = self.cfg
        return (c.n_layers, c.batch, context, self.cache_heads, c.head_dim)

    def init_cache(self, context: int) -> dict:
        """An empty KV cache for `context` positions, placed by the layout."""
        sharding = NamedSharding(self.mesh, self.cache_spec)
        make = jax.jit(lambda: jnp.zeros(self.cache_shape(context), jnp.dtype(self.cfg.dtype)),
                       out_shardings=sharding)
        return {"k": make(), "v": make()}

    @property
    def step_input_spec(self) -> P:
        batch = self.layout.mesh_axes("batch")
        b = None if not batch else batch if len(batch) > 1 else batch[0]
        return P(b, None) if self.cfg.vocab else P(b, None, None)

    def local_step(self, params: Params, cache: dict, x: jax.Array, pos: jax.Array):
        model = nnx.merge(graphdef(self.cfg), params)
        return model.step(x, cache, pos, self.step_comm)

    def step_fn(self):
        """(params, cache, x [B, T, D] or tokens [B, T], pos) -> (y [B, T, D], cache, stats):
        T new tokens at positions pos.., the cache updated in place (donated); params are the
        serving weights (`serving_params`)."""
        if self.gspmd:
            raise ValueError(f"{self.layout.spec}: prefill and decode steps run under "
                             f"--partitioner shard_map only")
        cache_specs = {"k": self.cache_spec, "v": self.cache_spec}
        body = jax.shard_map(self.local_step, mesh=self.mesh,
                             in_specs=(self.serving_specs, cache_specs, self.step_input_spec, P()),
                             out_specs=(P(*self.step_input_spec[:1], None, None), cache_specs,
                                        self.stats_specs))
        return jax.jit(body, donate_argnums=(1,))

    def abstract_params(self, dtype=None) -> Params:
        """Parameters as ShapeDtypeStructs with this layout's shardings: the float32 masters, or
        copies in `dtype` (the 16-bit weights a mixed-precision trainer or a server keeps)."""
        return jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, dtype or s.dtype, sharding=sh),
            param_shapes(self.cfg), self.param_shardings)

    def abstract_input(self, batch: int | None = None) -> jax.ShapeDtypeStruct:
        """The model input as a ShapeDtypeStruct: tokens [B, S] int32 or embeddings [B, S, D]."""
        shape = (batch or self.cfg.batch, self.cfg.seq)
        if self.cfg.vocab:
            return jax.ShapeDtypeStruct(shape, self.input_dtype, sharding=self.input_sharding)
        return jax.ShapeDtypeStruct(shape + (self.cfg.d_model,), self.input_dtype,
                                    sharding=self.input_sharding)

    @property
    def input_dtype(self):
        """The dtype the programs take their input in: int32 tokens, or embeddings in the compute
        dtype (a float32 host array is cast to it before it is placed)."""
        return jnp.dtype(jnp.int32 if self.cfg.vocab else self.cfg.dtype)

    def abstract_inputs(self) -> tuple[Params, jax.ShapeDtypeStruct]:
        """A forward's parameters (as `forward_fn` takes them) and input as ShapeDtypeStructs
        with shardings: compile without allocating."""
        params = (self.abstract_serving_params() if self.weights == Weights.FLOAT8
                  else self.abstract_params())
        return params, self.abstract_input()


SMALL_INIT_BYTES = 1 << 28  # 256 MiB of float32 masters: drawn on one device, then placed


def _own_copy(params: Params) -> Params:
    """Inside shard_map: this device's replica copy of each parameter (drop the replica axis)."""
    return jax.tree.map(lambda p: p[0], params)


def random_input(cfg: ModelConfig, seed: int) -> jax.Array:
    """The input drawn from `seed`: embeddings [B, S, D] float32 N(0, 1), or with a vocabulary
    tokens [B, S] int32 uniform over it."""
    key = jax.random.fold_in(jax.random.key(seed), 1)
    if cfg.vocab:
        return jax.random.randint(key, (cfg.batch, cfg.seq), 0, cfg.vocab, jnp.int32)
    return jax.random.normal(key, (cfg.batch, cfg.seq, cfg.d_model), jnp.float32)
