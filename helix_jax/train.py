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
from helix_jax.model import Sharded, param_shapes

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


def optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(0.0, tc.lr, tc.warmup,
                                                  max(tc.decay_steps, tc.warmup + 1),
                                                  end_value=tc.lr / 10)
    decay_mask = lambda p: jax.tree.map(lambda a: a.ndim >= 2, p)
    return optax.chain(optax.clip_by_global_norm(tc.clip),
                       optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=tc.weight_decay,
                                   mask=decay_mask))


class Trainer:
    """Parameters and optimizer state sharded by the layout, and a jitted train step."""

    def __init__(self, sharded: Sharded, tc: TrainConfig):
        self.sharded, self.tc, self.cfg = sharded, tc, sharded.cfg
        self.tx = optimizer(tc)
        mesh = sharded.mesh
        self.param_sh = sharded.param_shardings
        replicated = NamedSharding(mesh, P())
        abstract = jax.eval_shape(self.tx.init, param_shapes(self.cfg))
        # Optimizer state follows the parameters' shardings; its counters are replicated. (jit of
        # tx.init would otherwise put the moments on one device: see docs/jax-notes.md.)
        self.opt_sh = optax.tree_utils.tree_map_params(
            self.tx, lambda _, s: s, abstract, self.param_sh,
            transform_non_params=lambda _: replicated)
        self.data_sh = sharded.x_sharding
        self._step = jax.jit(self._train_step, donate_argnums=(0, 1),
                             in_shardings=(self.param_sh, self.opt_sh, self.data_sh),
                             out_shardings=(self.param_sh, self.opt_sh, replicated))
        self._batch = jax.jit(self._make_batch, out_shardings=self.data_sh)

    def init(self):
        params = self.sharded.init(self.tc.seed)
        opt_state = jax.jit(self.tx.init, out_shardings=self.opt_sh)(params)
        return params, opt_state

    def _make_batch(self, position):
        key = jax.random.fold_in(jax.random.key(self.tc.seed + 1), position)
        c = self.cfg
        return jax.random.normal(key, (c.batch, c.seq, c.d_model), jnp.float32)

    def loss(self, params, x):
        y, stats = self.sharded.forward_fn()(params, x)
        mse = jnp.mean(jnp.square(y.astype(jnp.float32) - teacher(x)))
        aux = jnp.mean(stats["aux_loss"]) if self.cfg.is_moe else jnp.float32(0)
        return mse + AUX_LOSS_WEIGHT * aux, {"mse": mse, "aux_loss": aux, **{
            k: jnp.sum(v) for k, v in stats.items() if k in ("dropped", "routed")}}

    def _train_step(self, params, opt_state, x):
        (loss, metrics), grads = jax.value_and_grad(self.loss, has_aux=True)(params, x)
        updates, opt_state = self.tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": loss, "grad_norm": optax.global_norm(grads), **metrics}

    def step(self, params, opt_state, position: int):
        return self._step(params, opt_state, self._batch(position))

    def compile(self, params, opt_state) -> None:
        """Compile the step ahead of running it, then wait for every process to have done so."""
        from helix_jax import distributed

        self._step = self._step.lower(params, opt_state, self._batch(0)).compile()
        distributed.barrier("train step compiled")

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


def train(sharded: Sharded, tc: TrainConfig, checkpoint_dir: str | None = None,
          save_every: int = 0, resume: bool = False, log_path: str | None = None,
          progress: bool = True, echo=print, profile_dir: str | None = None) -> dict:
    """Run `tc.steps` total steps (continuing from a checkpoint with `resume`); returns a summary
    with the per-step log and the final parameters."""
    from tqdm import tqdm

    from helix_jax.checkpoint import Checkpoints

    trainer = Trainer(sharded, tc)
    ckpts = Checkpoints(checkpoint_dir) if checkpoint_dir else None
    start, resumed_from = 0, None
    if resume and ckpts and ckpts.latest_step() is not None:
        resumed_from = ckpts.latest_step()
        meta = ckpts.read_meta(resumed_from)
        _check_compatible(meta, sharded.cfg, checkpoint_dir)
        state, meta = ckpts.restore(resumed_from, trainer.state_target())
        params, opt_state, start = state["params"], state["opt_state"], int(meta["data_position"])
        echo(f"resumed from step {resumed_from} in {ckpts.directory} (saved under layout "
             f"{meta['layout']}, now {sharded.layout.spec})")
    else:
        if resume:
            echo("no complete checkpoint found: starting from scratch")
        params, opt_state = trainer.init()

    log_file = open(log_path, "a") if log_path else None
    history = []
    tokens = sharded.cfg.batch * sharded.cfg.seq
    bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, disable=not progress,
               desc=f"train {sharded.cfg.name} on {sharded.layout.kind}", unit="step")
    profiling = False
    if start < tc.steps:
        trainer.compile(params, opt_state)
    try:
        for step in bar:
            if profile_dir and step == start + 1:  # after the compiling first step
                jax.profiler.start_trace(profile_dir, create_perfetto_trace=True)
                profiling = True
            t0 = time.perf_counter()
            params, opt_state, metrics = trainer.step(params, opt_state, step)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            seconds = time.perf_counter() - t0
            record = {"step": step + 1, **metrics, "tokens_per_s": tokens / seconds,
                      "seconds": seconds, "layout": sharded.layout.spec}
            history.append(record)
            if log_file:
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
            dropped = (f" dropped {int(metrics['dropped'])}/{int(metrics['routed'])}"
                       if "dropped" in metrics else "")
            line = (f"step {step + 1:>5}  loss {metrics['loss']:.5f}  "
                    f"{tokens / seconds:,.0f} tokens/s{dropped}")
            bar.write(line) if progress else echo(line)
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


def _check_compatible(meta: dict, cfg: ModelConfig, where) -> None:
    saved = ModelConfig.from_json(meta["config"])
    shape = ("n_layers", "n_heads", "head_dim", "d_model", "d_ff", "n_experts")
    diff = [f"{f} {getattr(saved, f)} -> {getattr(cfg, f)}" for f in shape
            if getattr(saved, f) != getattr(cfg, f)]
    if diff:
        raise ValueError(f"the checkpoint in {where} is for {meta['model']} and does not fit "
                         f"{cfg.name}: {'; '.join(diff)}. Use the same model or another "
                         f"--checkpoint-dir")


def log_records(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
