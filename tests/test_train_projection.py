"""Training projections: model files, the train step on every layout, remat in the compiled
FLOPs, composed pipeline schedules, measured-link pricing and bad inputs."""

import functools
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helix_jax.analysis.costmodel.hardware import HARDWARE, hardware_to_dict, load_hardware
from helix_jax.analysis.costmodel.pricing import measured_seconds
from helix_jax.analysis.costmodel.project import project
from helix_jax.analysis.hlo.flops import matmul_flops
from helix_jax.config import dump_model_file, load_model_file, resolve_model
from helix_jax.layouts import parse_layout
from helix_jax.model import Sharded
from helix_jax.train import compile_train_step, train_step_fn
from tests.cli_run import helix_here, helix_process

GPT = """name = "tiny-gpt"
n_layers = 4
d_model = 64
n_heads = 4
head_dim = 16
d_ff = 256
vocab = 128
"""


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "gpt.toml"
    path.write_text(GPT)
    return path


def test_model_file_round_trips(gpt, tmp_path):
    cfg = load_model_file(gpt)
    assert (cfg.name, cfg.n_layers, cfg.d_model, cfg.vocab) == ("tiny-gpt", 4, 64, 128)
    again = tmp_path / "again.toml"
    again.write_text(dump_model_file(cfg))
    assert load_model_file(again) == cfg
    moe = resolve_model("tiny-moe").replace(vocab=32, capacity_factor=2.0)
    (tmp_path / "moe.toml").write_text(dump_model_file(moe))
    back = load_model_file(tmp_path / "moe.toml")
    assert (back.n_experts, back.capacity_factor, back.vocab) == (16, 2.0, 32)


@pytest.mark.parametrize("text, message", [
    (GPT.replace("vocab = 128\n", ""), r"missing key\(s\) \['vocab'\]"),
    (GPT + "dropout = 0.1\n", r"unknown key 'dropout'"),
    (GPT + "drop_out = 0.1\n", r"unknown key 'drop_out'"),
    (GPT + "n_layrs = 2\n", r"unknown key 'n_layrs' \(did you mean 'n_layers'\?\)"),
    (GPT.replace("n_layers = 4", 'n_layers = "four"'), "n_layers must be int, got str"),
    (GPT.replace("n_layers = 4", "n_layers = 4.5"), "n_layers must be int, got float"),
    (GPT.replace("d_ff = 256", "d_ff = 0"), "d_ff must be a whole number from 1 to"),
    ("name = [", "not valid TOML"),
])
def test_bad_model_files_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        load_model_file(path)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match="no such file"):
        load_model_file(tmp_path / "missing.toml")


def _one_step(cfg, spec, params, inputs, targets):
    """One step of the real train step with plain SGD (lr 1): new params = params - gradients.
    (AdamW's first step is lr * sign(g): noise for the tiny gradients of some entries.)"""
    import optax

    sharded = Sharded.build(cfg, parse_layout(spec))
    tx = optax.sgd(1.0)
    params = sharded.place(params)
    opt = jax.jit(tx.init)(params)
    step = jax.jit(train_step_fn(sharded, tx))
    new, _, metrics = step(params, opt, inputs, targets)
    return jax.device_get(new), jax.device_get(metrics)


DENSE = ("dp:dp=4", "dp:dp=4,fsdp=true", "tp-pp:tp=2,pp=2,microbatches=2",
         "tp-pp:tp=4,pp=1,sp=true,microbatches=2", "helix:m=2,n=2", "helix:m=2,n=2,core=seq_a2a",
         "helix:m=2,n=2,core=qk_gather,dp=2")


# MoE: no accumulation or pipeline here (the Switch loss of a chunk is not that of the batch).
MOE = ("ep:ep=4", "helix-ep:m=2,n=2", "tp-pp:tp=2,pp=1,microbatches=1")
TINY_MOE = {"batch": 8, "seq": 8, "capacity_factor": 16.0, "n_experts": 4}


@functools.cache
def _single_step(model: str):
    """The model, its parameters and input, and one step on a single device: the reference every
    layout's step is compared with (computed once per model; the host copies are not donated)."""
    cfg = resolve_model(model).replace(**(TINY_MOE if model == "tiny-moe" else
                                          {"batch": 8, "seq": 16}))
    params = jax.device_get(Sharded.build(cfg, parse_layout("single")).init(0))
    x = jax.random.normal(jax.random.key(1), (cfg.batch, cfg.seq, cfg.d_model))
    t = jax.random.normal(jax.random.key(2), (cfg.batch, cfg.seq, cfg.d_model))
    return (cfg, params, x, t, *_one_step(cfg, "single", params, x, t))


@pytest.mark.parametrize("model, spec", [("tiny-dense", s) for s in DENSE]
                         + [("tiny-moe", s) for s in MOE])
def test_train_step_on_every_layout_equals_single(model, spec):
    """One training step (loss, gradients, their reduction over replicas and accumulation, the
    update) gives the same parameters everywhere."""
    cfg, params, x, t, ref, ref_m = _single_step(model)
    got, got_m = _one_step(cfg, spec, params, x, t)
    chex.assert_trees_all_close(got, ref, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(got_m["loss"], ref_m["loss"], rtol=1e-5)


@pytest.mark.parametrize("spec", ("tp-pp:tp=4,pp=1,sp=true", "helix:m=2,n=2", "dp:dp=2,fsdp=true"))
def test_vocab_parallel_loss_equals_single(gpt, spec):
    """Embedding, LM head and cross-entropy split over the vocabulary: the same step."""
    cfg = load_model_file(gpt).replace(batch=4, seq=16, dtype="float32")
    params = Sharded.build(cfg, parse_layout("single")).init(0)
    tokens = jax.random.randint(jax.random.key(3), (4, 16), 0, cfg.vocab)
    labels = jnp.roll(tokens, 1, axis=1)
    ref, ref_m = _one_step(cfg, "single", params, tokens, labels)
    got, got_m = _one_step(cfg, spec, params, tokens, labels)
    chex.assert_trees_all_close(got, ref, rtol=2e-5, atol=2e-6)
    assert got_m["ce"] == pytest.approx(float(ref_m["ce"]), rel=1e-5)
    assert abs(float(ref_m["ce"]) - math.log(cfg.vocab)) < 1.0  # an untrained model: ~ln V


def test_remat_changes_the_compiled_flops_as_the_math_says():
    """Per token and layer: forward F = projections + attention + FFN; the training step is 3F;
    selective adds the attention core (scores and P·V) again; full adds the forward again except
    the last matmul of each layer (W2: the backward never needs its output). On the blockwise
    scan, the attention the projections compile (the library call's backward needs only the
    recomputed scores, so XLA drops the recomputed P·V)."""
    cfg = resolve_model("tiny-dense").replace(seq=32, batch=4)
    D, Hd, F, S = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.d_ff, cfg.seq
    attn_core = 4 * S * Hd  # one block: the causal mask is applied, not skipped
    fwd = 8 * D * Hd + attn_core + 4 * D * F
    tokens = cfg.batch * cfg.seq * cfg.n_layers
    expected = {"none": 3 * fwd, "selective": 3 * fwd + attn_core,
                "full": 4 * fwd - 2 * F * D}
    for remat, per_token in expected.items():
        sharded = Sharded.build(cfg, parse_layout("single"), remat=remat,
                                attention_kernel="blockwise")
        got = matmul_flops(compile_train_step(sharded).as_text())["flops"]
        assert got == pytest.approx(per_token * tokens, rel=1e-9), remat


def test_train_projection_of_a_whole_program():
    cfg = resolve_model("tiny-dense").replace(batch=16, seq=32)
    fwd = project(cfg, parse_layout("helix:m=2,n=2"), HARDWARE["h100-sxm"],
                  batch_chunks=1).to_dict()
    r = project(cfg, parse_layout("helix:m=2,n=2"), HARDWARE["h100-sxm"], batch_chunks=1,
                mode="train").to_dict()
    assert r["mode"] == "train" and r["extended_by_formula"] == []
    assert r["flops_per_device"] == pytest.approx(3 * fwd["flops_per_device"], rel=0.02)
    p = r["projected"]
    assert p["step_seconds"] == pytest.approx(p["compute_seconds"] + p["exposed_comm_seconds"])
    assert p["tokens_per_s"] * p["step_seconds"] == pytest.approx(16 * 32)
    assert {"step_seconds", "tokens_per_s", "mfu"} <= set(p) and "fits" in r


def test_composed_pipeline_schedules():
    """One stage compiled once; the schedules differ exactly by their bubbles."""
    cfg = resolve_model("tiny-dense").replace(n_layers=8, batch=32, seq=32)
    hw = HARDWARE["dgx-h100"]
    runs = {}
    for sched in ("schedule=gpipe", "schedule=1f1b", "schedule=1f1b,virtual=2"):
        lay = parse_layout(f"tp-pp:tp=2,pp=4,dp=2,microbatches=8,{sched}")
        runs[sched] = project(cfg, lay, hw, mode="train").to_dict()
    g, f, v = (runs[k]["projected"] for k in runs)
    t_mb = g["microbatch_seconds"]
    assert f["microbatch_seconds"] == pytest.approx(t_mb)
    assert g["pipeline_seconds"] == pytest.approx((8 + 3) * t_mb)
    assert f["pipeline_seconds"] == pytest.approx((8 + 3) * t_mb)
    assert v["pipeline_seconds"] == pytest.approx((8 + 3 / 2) * t_mb)
    # 1F1B keeps at most pp microbatches in flight, GPipe all of them
    gm, fm = (runs[k]["memory"]["activations_in_flight_bytes"] for k in list(runs)[:2])
    assert gm / fm == pytest.approx(8 / 4)
    r = runs["schedule=1f1b,virtual=2"]
    assert "compiled" in r and any("interleaved" in e for e in r["extended_by_formula"])


def test_measured_links_are_hierarchical():
    hw = HARDWARE["dgx-h100"]
    inside = measured_seconds("all-reduce", 256e6, 8, 1, hw)
    across = measured_seconds("all-reduce", 256e6, 16, 2, hw)
    assert across > inside > 2 * 7 / 8 * 256e6 / 480e9
    # the inter-node phase moves V/g per GPU over its NIC: 2(N-1)/N * V/g / NIC
    assert across - measured_seconds("all-reduce", 256e6, 8, 1, hw) == pytest.approx(
        2 * 1 / 2 * 256e6 / 8 / hw.nic_bytes_per_s + 2 * hw.latency_ib_s)
    assert measured_seconds("all-gather", 1e3, 8, 1, hw) == hw.latency_small_s


def test_hardware_profiles_carry_sources_and_round_trip(tmp_path):
    import json

    for name in ("dgx-h100", "dgx-a100"):
        hw = HARDWARE[name]
        assert hw.gpus_per_node == 8 and hw.measured_links
        for field in ("flops_per_s", "hbm_bytes_per_s", "allreduce_busbw", "nic_bytes_per_s"):
            assert hw.sources[field], (name, field)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(hardware_to_dict(hw)))
        assert load_hardware(path) == hw
    bad = hardware_to_dict(HARDWARE["dgx-h100"]) | {"allreduce_busbw": [[1, -2]]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="allreduce_busbw must be a list"):
        load_hardware(tmp_path / "bad.json")


@pytest.mark.parametrize("args, message", [
    (["project", "--model-file", "nope.toml"], "model file nope.toml: no such file"),
    (["project", "--model", "tiny-dense", "--layout", "helix", "--remat", "full"],
     "--remat full applies to --mode train only"),
    (["project", "--model", "tiny-dense", "--layout", "tp-pp:virtual=2"],
     "virtual=2 .interleaved stages. needs schedule=1f1b"),
    (["train", "--model", "tiny-dense", "--layout", "tp-pp:tp=4,pp=2,tp_overlap=true"],
     "as collective matmuls; add sp=true"),
    (["project", "--model", "tiny-dense", "--layout", "helix", "--json", "/no/such/dir/x.json"],
     "folder /no/such/dir does not exist"),
])
def test_bad_training_inputs_are_one_line_errors(args, message, tmp_path):
    r = helix_here(args, tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    import re

    assert re.search(message, r.stderr), r.stderr


def test_calibrate_writes_a_profile_that_projects(tmp_path):
    """`helix calibrate --quick` on this CPU: measured rates, sources that say so, and a profile
    that `helix project --hardware FILE` accepts."""
    import json

    out = tmp_path / "cal.json"
    r = helix_here(["calibrate", "--quick", "--out", str(out), "--repeat", "2", "--warmup", "1"])
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    hw = load_hardware(out)
    assert hw.flops_per_s == max(data["measurements"]["matmul_flops_per_s"].values()) > 0
    assert hw.hbm_bytes_per_s > 0 and hw.attention_flops_per_s > 0
    assert "helix calibrate" in hw.sources["flops_per_s"]
    assert set(data["measurements"]["attention_flops_per_s"]) == {"score_psum", "qk_gather",
                                                                  "seq_a2a"}
    p = project(resolve_model("tiny-dense"), parse_layout("helix:m=2,n=2"), hw, batch_chunks=1)
    assert p.step_seconds > 0


def test_cli_projects_a_composed_training_step(gpt, tmp_path):
    """The command a user types for a large layout: a model file, a pipelined, data-parallel,
    interleaved layout on a measured profile, and a JSON with the headline fields."""
    import json

    out = tmp_path / "out.json"
    r = helix_process(["project", "--model-file", str(gpt),
                       "--layout", "tp-pp:tp=2,pp=2,dp=64,microbatches=4,schedule=1f1b,virtual=2",
                       "--hardware", "dgx-a100", "--mode", "train", "--batch", "512", "--seq",
                       "64", "--dtype", "float16", "--remat", "selective", "--json", str(out)])
    assert r.returncode == 0, r.stderr
    assert "extended by formula" in r.stdout and "memory/device" in r.stdout
    d = json.loads(out.read_text())
    assert d["devices"] == 256 and d["mode"] == "train" and d["remat"] == "selective"
    assert {"step_seconds", "tokens_per_s", "mfu"} <= set(d["projected"])
    assert d["memory_bytes_per_device"] > 0 and isinstance(d["fits"], bool)

    # the printed step is the sum of the terms it names (the optimizer included)
    line = next(x for x in r.stdout.splitlines() if x.startswith("step "))
    step, terms = line.split("=", 1)
    named = [float(v) for v in re.findall(r"([0-9.]+(?:e-?\d+)?) s", terms.split("(all comm")[0])]
    assert "optimizer" in terms and len(named) == 3
    assert sum(named) == pytest.approx(float(step.split()[1]), rel=2e-3)
    assert float(step.split()[1]) == pytest.approx(d["projected"]["step_seconds"], rel=1e-3)
