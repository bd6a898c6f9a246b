"""1F1B and interleaved 1F1B as the runtime executes them: the tick table's data flow, gradients
equal to the single device's (and to GPipe's where microbatches change the math: MoE), the
memory the compiled step keeps, and `helix train` with resume between schedules."""

import json

import chex
import jax
import numpy as np
import pytest

from helix_jax.analysis.costmodel.memory import activation_bytes_per_layer
from helix_jax.config import dump_model_file, resolve_model
from helix_jax.layouts import parse_layout
from helix_jax.model import Sharded
from helix_jax.parallel.schedule import BACKWARD, FORWARD, build
from helix_jax.train import TrainConfig, Trainer, _grad_fn, compile_train_step
from tests.cli_run import helix_here


@pytest.mark.parametrize("p, M, V", [(4, 8, 1), (3, 7, 1), (2, 4, 2), (4, 8, 2), (2, 6, 3)])
def test_table_delivers_every_message_to_its_consumer(p, M, V):
    """Replay the table with labels for values: every forward reads the output of the same
    microbatch's previous chunk (stage s - 1, or the last stage's previous chunk), every backward
    the cotangent of the next one, and its own forward's residuals from the stash."""
    t = build(p, M, V)
    f_inbox = [[None] * t.forward_inbox for _ in range(p)]
    b_inbox = [[None] * t.backward_inbox for _ in range(p)]
    stash = [[None] * t.stash_slots for _ in range(p)]
    sent_f, sent_b, head = [None] * p, [None] * p, [None] * p
    done = set()
    for tick in range(t.ticks):
        for s in range(p):  # what the previous tick sent arrives
            f_inbox[s][tick % t.forward_inbox] = sent_f[(s - 1) % p]
            b_inbox[s][tick % t.backward_inbox] = sent_b[(s + 1) % p]
        sent_f, sent_b = [None] * p, [None] * p
        for s in range(p):
            op, i, c = t.op[tick, s], t.mb[tick, s], t.chunk[tick, s]
            v = c * p + s  # the virtual stage
            if op == FORWARD:
                got = ("x", i) if t.inbox[tick, s] < 0 else f_inbox[s][t.inbox[tick, s]]
                assert got == (("x", i) if v == 0 else ("F", i, v - 1))
                stash[s][t.stash[tick, s]] = ("F", i, v)
                sent_f[s] = ("F", i, v)
                if v == p * V - 1:
                    head[s] = ("loss", i)
            elif op == BACKWARD:
                got = head[s] if t.inbox[tick, s] < 0 else b_inbox[s][t.inbox[tick, s]]
                assert got == (("loss", i) if v == p * V - 1 else ("B", i, v + 1))
                assert stash[s][t.stash[tick, s]] == ("F", i, v)
                sent_b[s] = ("B", i, v)
                done.add((i, v))
    assert done == {(i, v) for i in range(M) for v in range(p * V)}
    if V == 1:  # Megatron's 1F1B: stage s holds p - s microbatches, in 2M + 2p - 2 ticks
        assert t.in_flight() == [min(p - s, M) for s in range(p)]
        assert t.ticks == 2 * M + 2 * p - 2


def _grads(cfg, spec):
    sharded = Sharded.build(cfg, parse_layout(spec))
    trainer = Trainer(sharded, TrainConfig(steps=1))
    inputs, targets = trainer._make_batch(0)
    params = sharded.init(0)
    per_replica = sharded.layout.size("batch") > 1
    wrt = sharded.replica_copies(params) if per_replica else params
    (loss, _), g = jax.jit(_grad_fn(sharded, per_replica))(wrt, inputs, targets)
    return float(loss), jax.device_get(sharded.sum_replicas(g) if per_replica else g)


@pytest.mark.parametrize("model, spec, reference", [
    # (1F1B at p = 4 alone: the helix train test below, whose losses after each update follow)
    ("tiny-dense", "tp-pp:tp=2,pp=2,dp=2,microbatches=4,schedule=1f1b,virtual=2,sp=true",
     "single"),
    # context parallelism's ring runs both branches every tick (a collective-permute)
    ("tiny-llama", "tp-pp:tp=2,pp=2,microbatches=4,schedule=1f1b,virtual=2,cp=2,sp=true",
     "single"),
    # the router's load-balancing loss is per microbatch: GPipe is the reference
    ("tiny-moe", "tp-pp:tp=1,pp=2,dp=2,ep=2,microbatches=2,schedule=1f1b",
     "tp-pp:tp=1,pp=2,dp=2,ep=2,microbatches=2"),
])
def test_gradients_equal_the_reference(model, spec, reference):
    overrides = {"capacity_factor": 16.0} if model == "tiny-moe" else {}
    cfg = resolve_model(model, n_layers=8, batch=8, seq=16, dtype="float32", **overrides)
    (ref_loss, ref), (loss, got) = _grads(cfg, reference), _grads(cfg, spec)
    assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss)
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(ref))
    chex.assert_trees_all_close(got, ref, atol=2e-5 * scale, rtol=0)


def test_one_f_one_b_keeps_p_microbatches_of_activations_not_m():
    """The compiled step's temporaries, GPipe against 1F1B with M = 4p: 1F1B's are smaller by at
    least half of what the activation formula says the (M - p) microbatches it does not keep
    would take."""
    p, M = 2, 8
    cfg = resolve_model("tiny-dense", n_layers=8, batch=M, seq=64, dtype="float32")
    temp = {}
    for schedule in ("gpipe", "1f1b"):
        sharded = Sharded.build(cfg, parse_layout(f"tp-pp:tp=2,pp={p},microbatches={M},"
                                                  f"schedule={schedule}"))
        temp[schedule] = compile_train_step(sharded).memory_analysis().temp_size_in_bytes
    per_microbatch = activation_bytes_per_layer(cfg, 1, 2, False, "none") * cfg.n_layers // p
    assert temp["gpipe"] - temp["1f1b"] >= 0.5 * (M - p) * per_microbatch, temp


def test_helix_train_runs_both_schedules_and_resumes_across_them(tmp_path):
    """`helix train` on an 8-layer model with tiny-dense's shapes: 1F1B (p = 4) and interleaved
    (p = 2, V = 2) log single's losses, and each resumes from the other's checkpoint."""
    model = tmp_path / "tiny8.toml"
    model.write_text(dump_model_file(resolve_model("tiny-dense", n_layers=8).replace(
        name="tiny-dense-8")))
    one_f_one_b = "tp-pp:tp=2,pp=4,microbatches=8,schedule=1f1b"
    interleaved = "tp-pp:tp=2,pp=2,microbatches=4,schedule=1f1b,virtual=2"

    def train(layout, steps, ckpt=None, resume=False):
        log = tmp_path / f"log{len(list(tmp_path.glob('log*')))}.jsonl"
        args = ["train", "--model-file", str(model), "--layout", layout, "--steps", str(steps),
                "--batch", "8", "--seq", "16", "--dtype", "float32", "--no-progress",
                "--log", str(log)]
        args += ["--checkpoint-dir", str(tmp_path / ckpt)] if ckpt else []
        out = helix_here(args + (["--resume"] if resume else []))
        assert out.returncode == 0, out.stderr
        return [json.loads(line)["loss"] for line in log.read_text().splitlines()]

    single = train("single", 5)
    for ckpt, (first, then) in enumerate(((one_f_one_b, interleaved), (interleaved, one_f_one_b))):
        np.testing.assert_allclose(train(first, 3, f"ck{ckpt}"), single[:3], rtol=1e-5)
        np.testing.assert_allclose(train(then, 5, f"ck{ckpt}", resume=True), single[3:],
                                   rtol=1e-5)


def test_every_kind_of_training_candidate_the_planner_ranks_runs():
    """Each distinct kind of `helix plan --mode train` candidate for a tiny MoE model on 4
    devices (layout kind, schedule, interleaving, sp, tp_overlap, fsdp, ep, pipelining, core,
    partitioner, remat): helix train's checks accept it and its train step traces (what
    `helix train` runs; the traced program is not compiled)."""
    from helix_jax.analysis.planner.space import enumerate_candidates
    from helix_jax.gspmd import check_partitioner
    from helix_jax.layouts import overlap_without_sp
    from helix_jax.train import abstract_state, optimizer, target_struct, train_step_fn

    cfg = resolve_model("tiny-moe", batch=8, seq=16, n_layers=4)
    candidates, _ = enumerate_candidates(cfg, 4, "train")
    kinds = {}
    for c in candidates:
        o = c.layout.options
        kinds.setdefault((c.layout.kind, o.get("schedule"), o.get("virtual", 1) > 1, o.get("sp"),
                          o.get("tp_overlap"), o.get("fsdp"), o.get("ep", 1) > 1,
                          c.layout.size("layers") > 1, o.get("core"), c.partitioner), c)
        kinds.setdefault(("remat", c.remat), c)
    assert len(kinds) >= 20 and any(k[1] == "1f1b" and k[2] for k in kinds)
    tx = optimizer(TrainConfig(steps=1))
    for c in kinds.values():
        check_partitioner(c.layout, c.partitioner)
        assert not overlap_without_sp(c.layout), c.label
        sharded = Sharded.build(cfg, c.layout, remat=c.remat, partitioner=c.partitioner)
        _, params, opt = abstract_state(sharded, tx)
        jax.jit(train_step_fn(sharded, tx)).trace(
            params, opt, sharded.abstract_input(), target_struct(sharded))
