"""Training on any layout: a synthetic task, AdamW with warm-up + cosine and global-norm clipping,
orbax checkpoints that resume exactly and across layouts.

The task (`teacher`): from random input embeddings x [B, S, D], predict per token
standardise(tanh(x·T1) + (prefix-sum of x / √(t+1))·T2) with fixed random T1, T2. The first term
is per token (the FFN can learn it), the second mixes the causal prefix (attention must learn it).
A fresh batch per step comes from (seed, data position), so a resumed run sees exactly the data
it would have seen. The optimizer runs outside the shard_map on whole (sharded) arrays, so the
clipping norm is the global one, not a per-shard one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from helix_jax.config import ModelConfig
from helix_jax.enums import Schedule
from helix_jax.model import Sharded, param_shapes
from helix_jax.scheduled_grads import loss_and_grads_fn

AUX_LOSS_WEIGHT = 0.01
TEACHER_SEED = 1234


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int
    lr: float = 3e-3
    warmup: int = 10
    decay_steps: int = 1000  # the cosine's horizon: fixed, so a resumed run follows the same curve
    seed: int = 0
    weight_decay: float = 0.01
    clip: float = 1.0
    hf: str | None = None  # start from this Hugging Face checkpoint's weights, not from `seed`

    def __post_init__(self) -> None:
        """Every hyper-parameter in its range, checked before any work (a ValueError naming it)."""
        import math

        rules = {"steps": (self.steps >= 1, "at least 1"),
                 "lr": (math.isfinite(self.lr) and self.lr > 0, "a finite number > 0"),
                 "warmup": (self.warmup >= 0, "at least 0"),
                 "decay_steps": (self.decay_steps >= 1, "at least 1"),
                 "seed": (0 <= self.seed < 2**32, "between 0 and 2**32 - 1"),
                 "weight_decay": (math.isfinite(self.weight_decay) and self.weight_decay >= 0,
                                  "a finite number >= 0"),
                 "clip": (math.isfinite(self.clip) and self.clip > 0, "a finite number > 0")}
        for name, (ok, what) in rules.items():
            if not ok:
                raise ValueError(f"training: {name} must be {what}, got {getattr(self, name)}")


def teacher(x: jax.Array) -> jax.Array:
    """The synthetic target for input x [B, S, D] (see module doc), float32."""
    D = x.shape[-1]
    k1, k2 = jax.random.split(jax.random.key(TEACHER_SEED))
    t1 = jax.random.normal(k1, (D, D)) * D**-0.5
    t2 = jax.random.normal(k2, (D, D)) * D**-0.5
    x = x.astype(jnp.float32)
    prefix = jnp.cumsum(x, axis=1) / jnp.sqrt(jnp.arange(1, x.shape[1] + 1))[None, :, None]
    y = jnp.tanh(x @ t1) + prefix @ t2
    return (y - y.mean(-1, keepdims=True)) / (y.std(-1, keepdims=True) + 1e-6)


# Weight decay by what a parameter is, read from its name (the last key of its path): the
# matrices (attention projections, FFN and expert weights, the router, embeddings, the LM head)
# decay; norm scales and biases do not. Stacking per layer or per expert makes a norm scale [L, D]
# or a bias [L, E, F] look like a matrix, so the number of dimensions cannot decide.
DECAYED = frozenset({"wq", "wk", "wv", "wo", "w1", "w2", "w3", "router", "table", "w"})
NOT_DECAYED = frozenset({"scale", "bias", "b1", "b2", "b3", "bq", "bk", "bv", "bo"})


def decay_mask(params) -> dict:
    """True for every parameter AdamW decays (see DECAYED); a parameter of no known kind is an
    error, so a new one cannot silently pick a side."""
    def decays(path, _) -> bool:
        name = str(getattr(path[-1], "key", path[-1]))
        if name not in DECAYED | NOT_DECAYED:
            raise ValueError(f"parameter {jax.tree_util.keystr(path)}: no weight-decay rule for "
                             f"{name!r}; add it to train.DECAYED or train.NOT_DECAYED")
        return name in DECAYED
    return jax.tree_util.tree_map_with_path(decays, params)


def optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(0.0, tc.lr, tc.warmup,
                                                  max(tc.decay_steps, tc.warmup + 1),
                                                  end_value=tc.lr / 10)
    return optax.chain(optax.clip_by_global_norm(tc.clip),
                       optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=tc.weight_decay,
                                   mask=decay_mask))


def _loss(sharded: Sharded, params, inputs, targets, per_replica: bool = False):
    """The training loss of one batch and its metrics: cross-entropy against `targets` (labels)
    for a model with a vocabulary, else the mean squared error against `targets` [B, S, D]; plus
    the Switch load-balancing loss for MoE models. `per_replica`: `params` are the model's
    `replica_copies` (see `Sharded.forward_fn`)."""
    cfg = sharded.cfg
    if cfg.vocab:
        per_token, stats = sharded.token_loss_fn(per_replica)(params, inputs, targets)
        main = jnp.mean(per_token)
    else:
        y, stats = sharded.forward_fn(per_replica)(params, inputs)
        main = jnp.mean(jnp.square(y.astype(jnp.float32) - targets.astype(jnp.float32)))
    return _with_metrics(cfg, main, stats)


def _with_metrics(cfg, main, stats):
    """(the training loss, its metrics) from the mean loss and the per-layer stats."""
    aux = jnp.mean(stats["aux_loss"]) if cfg.is_moe else jnp.float32(0)
    metrics = {"ce" if cfg.vocab else "mse": main, "aux_loss": aux,
               **{k: jnp.sum(v) for k, v in stats.items() if k in ("dropped", "routed")}}
    return main + AUX_LOSS_WEIGHT * aux, metrics


def _grad_fn(sharded: Sharded, per_replica: bool):
    """(params, inputs, targets) -> ((loss, metrics), gradients) of one batch chunk: autodiff
    of the forward pass, or for a 1F1B layout the gradient its schedule takes."""
    if (sharded.layout.options.get("schedule") == Schedule.ONE_F_ONE_B
            and sharded.layout.mesh_axes("layers")):
        fn = loss_and_grads_fn(sharded, per_replica, AUX_LOSS_WEIGHT)

        def scheduled(p, x, t):
            (main, stats), grads = fn(p, x, t)
            return _with_metrics(sharded.cfg, main, stats), grads
        return scheduled
    return jax.value_and_grad(lambda p, x, t: _loss(sharded, p, x, t, per_replica),
                              has_aux=True)


def accumulation_steps(sharded: Sharded) -> int:
    """Gradient accumulation per step: the batch chunks, times the microbatches of a layout
    whose `microbatches` option no pipeline uses (tp-pp with pp = 1)."""
    mb = sharded.layout.options.get("microbatches", 1) if not sharded.layout.mesh_axes("layers") else 1
    return sharded.batch_chunks * mb


def train_step_fn(sharded: Sharded, tx: optax.GradientTransformation):
    """(params, opt_state, inputs, targets) -> (params, opt_state, metrics), jit-compiled with
    donated parameters and optimizer state: forward, backward (with the sharded model's remat),
    accumulation over `accumulation_steps` chunks of the batch, the gradient reduction over data
    replicas, global-norm clipping and the optimizer update. The same program runs in `helix
    train` and is compiled abstractly by `helix project --mode train`.

    Data parallelism as every data-parallel trainer runs it: each replica accumulates its own
    gradients over the chunks and the replicas' sums are reduced once per step. (Differentiating
    the shard_map w.r.t. replicated parameters would sum over the replicas inside every chunk;
    the gradient is taken w.r.t. per-replica copies instead, see `Sharded.replica_copies`.)
    Parameters sharded over the data axes (`dp:fsdp=true`) are gathered per layer and their
    gradients reduce-scattered per chunk, as ZeRO-3 / FSDP with sharded gradients do."""
    k = accumulation_steps(sharded)
    cfg = sharded.cfg
    if cfg.batch % k:
        raise ValueError(f"{cfg.name} on {sharded.layout.spec}: batch {cfg.batch} is not "
                         f"divisible into {k} accumulation steps")
    inner = dataclasses.replace(sharded, cfg=cfg.replace(batch=cfg.batch // k), batch_chunks=1)
    data_spec = sharded.input_spec
    mesh = sharded.mesh
    per_replica = not sharded.gspmd and sharded.layout.size("batch") > 1

    def chunk(a, i):  # rows i, i + k, i + 2k, ... of [B, ...]: each device keeps its own rows
        a = a.reshape(a.shape[0] // k, k, *a.shape[1:])
        a = jax.lax.with_sharding_constraint(
            a, NamedSharding(mesh, P(data_spec[0], *([None] * (a.ndim - 1)))))
        return jax.lax.dynamic_index_in_dim(a, i, axis=1, keepdims=False)

    def step(params, opt_state, inputs, targets):
        grad_fn = _grad_fn(inner, per_replica)
        wrt = inner.replica_copies(params) if per_replica else params
        if k == 1:
            (loss, metrics), grads = grad_fn(wrt, inputs, targets)
        else:
            def acc(total, i):
                (loss, metrics), g = grad_fn(wrt, chunk(inputs, i), chunk(targets, i))
                return jax.tree.map(jnp.add, total, g), (loss, metrics)

            zeros = jax.tree.map(jnp.zeros_like, wrt)
            grads, (loss, metrics) = jax.lax.scan(acc, zeros, jnp.arange(k))
            grads = jax.tree.map(lambda g: g / k, grads)
            loss = loss.mean()
            metrics = {n: v.sum() if n in ("dropped", "routed") else v.mean()
                       for n, v in metrics.items()}
        if per_replica:
            grads = inner.sum_replicas(grads)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), **metrics}

    return step


def optimizer_shardings(sharded: Sharded, tx: optax.GradientTransformation):
    """Optimizer state follows the parameters' shardings; its counters are replicated. (jit of
    tx.init would otherwise put the moments on one device: see docs/jax-notes.md.)"""
    abstract = jax.eval_shape(tx.init, param_shapes(sharded.cfg))
    return optax.tree_utils.tree_map_params(
        tx, lambda _, s: s, abstract, sharded.param_shardings,
        transform_non_params=lambda _: NamedSharding(sharded.mesh, P()))


def target_struct(sharded: Sharded, batch: int | None = None) -> jax.ShapeDtypeStruct:
    """What the loss compares the model with: labels [B, S] int32 (vocabulary) or [B, S, D]."""
    return sharded.abstract_input(batch) if sharded.cfg.vocab else jax.ShapeDtypeStruct(
        (batch or sharded.cfg.batch, sharded.cfg.seq, sharded.cfg.d_model),
        jnp.dtype(sharded.cfg.dtype), sharding=sharded.input_sharding)


def abstract_state(sharded: Sharded, tx: optax.GradientTransformation):
    """(optimizer shardings, parameters, optimizer state) as sharded ShapeDtypeStructs."""
    opt_sh = optimizer_shardings(sharded, tx)
    opt = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                       jax.eval_shape(tx.init, param_shapes(sharded.cfg)), opt_sh)
    return opt_sh, sharded.abstract_params(), opt


def compile_train_step(sharded: Sharded, tc: TrainConfig | None = None):
    """The train step compiled for abstract arguments (nothing allocated): for projections."""
    tx = optimizer(tc or TrainConfig(steps=1))
    opt_sh, params, opt = abstract_state(sharded, tx)
    replicated = NamedSharding(sharded.mesh, P())
    jitted = jax.jit(train_step_fn(sharded, tx), donate_argnums=(0, 1),
                     out_shardings=(sharded.param_shardings, opt_sh, replicated))
    return jitted.lower(params, opt, sharded.abstract_input(), target_struct(sharded)).compile()


def compile_grad_step(sharded: Sharded, params_in_compute_dtype: bool = False):
    """Forward and backward of one batch (no accumulation, no update), compiled abstractly: what
    one pipeline stage runs for one microbatch, for composed projections.

    `params_in_compute_dtype`: take the parameters in the model's dtype (the 16-bit copy that
    mixed-precision trainers such as Megatron keep beside the f32 masters), so the program holds
    no per-use conversion of the masters; its gradients come out in that dtype."""
    params = sharded.abstract_params(sharded.cfg.dtype if params_in_compute_dtype else None)

    def grads(params, inputs, targets):
        return jax.value_and_grad(lambda p: _loss(sharded, p, inputs, targets)[0])(params)

    return jax.jit(grads, out_shardings=(NamedSharding(sharded.mesh, P()),
                                         sharded.param_shardings)).lower(
        params, sharded.abstract_input(), target_struct(sharded)).compile()


def compile_update(sharded: Sharded, tc: TrainConfig | None = None):
    """The optimizer update alone (clip + AdamW on this layout's shards), compiled abstractly."""
    tx = optimizer(tc or TrainConfig(steps=1))
    opt_sh, params, opt = abstract_state(sharded, tx)

    def update(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.jit(update, donate_argnums=(0, 1),
                   out_shardings=(sharded.param_shardings, opt_sh)).lower(
        params, opt, params).compile()


def copy_task_labels(tokens: jax.Array) -> jax.Array:
    """Labels of the synthetic token task: each position predicts the previous token (0 first)."""
    return jnp.concatenate([jnp.zeros_like(tokens[:, :1]), tokens[:, :-1]], axis=1)


class Trainer:
    """Parameters and optimizer state sharded by the layout, and a jitted train step."""

    def __init__(self, sharded: Sharded, tc: TrainConfig):
        self.sharded, self.tc, self.cfg = sharded, tc, sharded.cfg
        self.tx = optimizer(tc)
        self.param_sh = sharded.param_shardings
        replicated = NamedSharding(sharded.mesh, P())
        self.opt_sh = optimizer_shardings(sharded, self.tx)
        self.data_sh = sharded.input_sharding
        self._step = jax.jit(train_step_fn(sharded, self.tx), donate_argnums=(0, 1),
                             in_shardings=(self.param_sh, self.opt_sh, self.data_sh,
                                           self.data_sh),
                             out_shardings=(self.param_sh, self.opt_sh, replicated))
        self._batch = jax.jit(self._make_batch, out_shardings=(self.data_sh, self.data_sh))

    def init(self):
        params = (self.sharded.load_hf(self.tc.hf) if self.tc.hf
                  else self.sharded.init(self.tc.seed))
        opt_state = jax.jit(self.tx.init, out_shardings=self.opt_sh)(params)
        return params, opt_state

    def _make_batch(self, position):
        """The batch at data `position`: inputs and what the loss compares the model with."""
        key = jax.random.fold_in(jax.random.key(self.tc.seed + 1), position)
        c = self.cfg
        if c.vocab:
            tokens = jax.random.randint(key, (c.batch, c.seq), 0, c.vocab, jnp.int32)
            return tokens, copy_task_labels(tokens)
        x = jax.random.normal(key, (c.batch, c.seq, c.d_model), jnp.float32)
        return x, teacher(x)

    def step(self, params, opt_state, position: int):
        return self._step(params, opt_state, *self._batch(position))

    def compile(self):
        """Compile the step ahead of running it (for abstract arguments: nothing is allocated,
        so its memory can be checked first), then wait for every process to have done so.
        Returns the compiled step."""
        from helix_jax import distributed

        if not isinstance(self._step, jax.stages.Compiled):
            state = self.state_target()
            batch = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                 jax.eval_shape(self._make_batch, 0), (self.data_sh, self.data_sh))
            self._step = self._step.lower(state["params"], state["opt_state"], *batch).compile()
            distributed.barrier("train step compiled")
        return self._step

    def state_target(self):
        """ShapeDtypeStructs with this layout's shardings: the restore target."""
        def sds(shape, sharding):
            return jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=sharding)
        params = jax.tree.map(sds, param_shapes(self.cfg), self.param_sh)
        opt = jax.tree.map(sds, jax.eval_shape(self.tx.init, param_shapes(self.cfg)), self.opt_sh)
        return {"params": params, "opt_state": opt}


def _kill_during_save_hook(step: int) -> None:
    """Test hook: HELIX_TEST_KILL_DURING_SAVE=N makes the process SIGKILL itself right after the
    asynchronous save of step N has started, so tests can check that no work is lost."""
    if os.environ.get("HELIX_TEST_KILL_DURING_SAVE") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


def _host_memory_check(sharded: Sharded, compiled) -> None:
    """Refuse, before anything is allocated, a training run this host cannot hold."""
    from helix_jax.memory_check import check_fits

    cfg = sharded.cfg
    check_fits([compiled], sharded.mesh, what=f"training {cfg.name} on {sharded.layout.spec}",
               way_out="try a smaller --batch, --seq or model, or price the step with `helix "
               "project --mode train`")


def train(sharded: Sharded, tc: TrainConfig, checkpoint_dir: str | None = None,
          save_every: int = 0, resume: bool = False, log_path: str | None = None,
          progress: bool = True, echo=print, profile_dir: str | None = None,
          warn=None, check_memory: bool = True) -> dict:
    """Run `tc.steps` total steps (continuing from a checkpoint with `resume`); returns a summary
    with the per-step log and the final parameters.

    The step is compiled first, for abstract arguments, and (with `check_memory`) its memory
    checked against the host before anything is allocated. `resume` restores the newest intact
    checkpoint: corrupt newer ones are reported through `warn` (default: stderr) and moved aside;
    if every one is corrupt a CheckpointError ends the run. Without `resume` the directory must
    hold no checkpoint yet (orbax would silently skip saving steps it already has)."""
    from helix_jax.errors import warn as default_warn

    if resume and not checkpoint_dir:
        raise ValueError("--resume needs --checkpoint-dir: the folder to resume from")
    trainer = Trainer(sharded, tc)
    ckpts, state, start, resumed_from = _start(trainer, checkpoint_dir, resume, check_memory,
                                               echo, warn or default_warn)
    params, opt_state = state
    history: list[dict] = []
    log_file = open(log_path, "a") if log_path else None
    profiling = False
    try:
        for step, params, opt_state, record in _steps(trainer, params, opt_state, start,
                                                      progress, echo):
            if profile_dir and step == start and not profiling:  # after the compiling step
                jax.profiler.start_trace(profile_dir, create_perfetto_trace=True)
                profiling = True
            history.append(record)
            if log_file:
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
            done = step + 1
            if ckpts and ((save_every and done % save_every == 0) or done == tc.steps):
                ckpts.save(done, {"params": params, "opt_state": opt_state},
                           {"step": done, "data_position": done, "model": sharded.cfg.name,
                            "layout": sharded.layout.spec, "config": sharded.cfg.to_json()})
                _kill_during_save_hook(done)
    finally:
        if profiling:
            jax.profiler.stop_trace()
        if ckpts:
            ckpts.close()
        if log_file:
            log_file.close()
    return {"history": history, "params": params, "resumed_from": resumed_from,
            "start_step": start}


def _start(trainer: Trainer, checkpoint_dir: str | None, resume: bool, check_memory: bool,
           echo, warn):
    """Compile the step (and check the host can hold it), then restore the newest intact
    checkpoint or initialize: (checkpoints or None, (params, opt_state), first step, the step
    resumed from or None). Checkpoints are closed again if anything fails."""
    from helix_jax.checkpoint import CORRUPT_SUFFIX, CheckpointError, Checkpoints

    sharded, tc = trainer.sharded, trainer.tc
    exists = bool(checkpoint_dir) and Path(checkpoint_dir).expanduser().is_dir()
    ckpts = Checkpoints(checkpoint_dir) if exists else None  # creates nothing yet
    try:
        newest = ckpts.latest_step() if ckpts else None
        if newest is not None and not resume:
            raise ValueError(f"--checkpoint-dir {checkpoint_dir} already holds checkpoints "
                             f"(newest: step {newest}); pass --resume to continue from it, or "
                             f"choose an empty folder")
        if resume and newest is not None:  # another model's checkpoint: refused before compiling
            try:
                _check_compatible(ckpts.read_meta(newest), sharded.cfg, checkpoint_dir)
            except CheckpointError:
                pass  # a damaged newest step: restore_newest reports it and tries older ones
        if not (resume and newest is not None and newest >= tc.steps):  # work left: compile
            compiled = trainer.compile()
            if check_memory:
                _host_memory_check(sharded, compiled)
        if checkpoint_dir and ckpts is None:
            ckpts = Checkpoints(checkpoint_dir)
        found = None
        if resume:
            found = ckpts.restore_newest(
                trainer.state_target(), warn=warn,
                check_meta=lambda meta: _check_compatible(meta, sharded.cfg, checkpoint_dir))
        if found is not None:
            resumed_from, state, meta = found
            echo(f"resumed from step {resumed_from} in {ckpts.directory} (saved under layout "
                 f"{meta['layout']}, now {sharded.layout.spec})")
            start, state = int(meta["data_position"]), (state["params"], state["opt_state"])
        else:
            if resume:
                aside = sorted(p.name for p in ckpts.directory.glob(f"*{CORRUPT_SUFFIX}*"))
                echo(f"no checkpoint in {ckpts.directory} yet: starting from scratch"
                     + (f" (it holds only steps moved aside as corrupt: {', '.join(aside)})"
                        if aside else ""))
            resumed_from, start, state = None, 0, trainer.init()
        if start < tc.steps:
            trainer.compile()  # no-op unless a fallback left work after all
    except BaseException:
        if ckpts:
            ckpts.close()
        raise
    return ckpts, state, start, resumed_from


def _steps(trainer: Trainer, params, opt_state, start: int, progress: bool, echo):
    """Run the steps from `start` to the end, with a progress bar and one line per step; yield
    (step, params, opt_state, its log record) after each."""
    from tqdm import tqdm

    sharded, tc = trainer.sharded, trainer.tc
    tokens = sharded.cfg.batch * sharded.cfg.seq
    bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, disable=not progress,
               desc=f"train {sharded.cfg.name} on {sharded.layout.kind}", unit="step")
    for step in bar:
        t0 = time.perf_counter()
        params, opt_state, metrics = trainer.step(params, opt_state, step)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        seconds = time.perf_counter() - t0
        record = {"step": step + 1, **metrics, "tokens_per_s": tokens / seconds,
                  "seconds": seconds, "layout": sharded.layout.spec}
        dropped = (f" dropped {int(metrics['dropped'])}/{int(metrics['routed'])}"
                   if "dropped" in metrics else "")
        line = (f"step {step + 1:>5}  loss {metrics['loss']:.5f}  "
                f"{tokens / seconds:,.0f} tokens/s{dropped}")
        bar.write(line) if progress else echo(line)
        yield step, params, opt_state, record


_RUN_SHAPE = ("name", "batch", "seq", "dtype", "q_block", "kv_block")


def _check_compatible(meta: dict, cfg: ModelConfig, where) -> None:
    """A checkpoint of another model (any parameter of another shape) is refused by name before
    its arrays are read: that is not corruption."""
    saved = ModelConfig.from_json(meta["config"])
    shapes = lambda c: [s.shape for s in jax.tree.leaves(param_shapes(c))]  # noqa: E731
    same_tree = jax.tree.structure(param_shapes(saved)) == jax.tree.structure(param_shapes(cfg))
    if same_tree and shapes(saved) == shapes(cfg):
        return
    diff = [f"{f.name} {getattr(saved, f.name)} -> {getattr(cfg, f.name)}"
            for f in dataclasses.fields(ModelConfig)
            if f.name not in _RUN_SHAPE and getattr(saved, f.name) != getattr(cfg, f.name)]
    raise ValueError(f"the checkpoint in {where} belongs to another model ({meta['model']}: "
                     f"{'; '.join(diff) or 'other parameter shapes'}); use the same model or "
                     f"another --checkpoint-dir")


def log_records(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
