"""Greedy generation runs on the device (one host sync per call) and equals the teacher-forced
decode; prefill and decode steps read the weights in the model's dtype, as the projection
prices them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helix_jax.config import resolve_model
from helix_jax.decode import compile_decode, generate, run_decode, serving_params
from helix_jax.layouts import parse_layout
from helix_jax.model import Sharded, random_input
from tests.cli_run import helix_here

PROMPT, NEW = 5, 6


@pytest.mark.parametrize("spec, tied", [("single", False), ("tp-pp:tp=2,pp=2", False),
                                         ("tp-pp:tp=2", True)])
def test_generation_is_one_device_call_equal_to_the_teacher_forced_decode(spec, tied):
    """Tied: the LM head is the embedding table transposed (no `head` parameter)."""
    cfg = resolve_model("tiny-llama").replace(seq=16, tie_embeddings=tied)
    sharded = Sharded.build(cfg, parse_layout(spec))
    params = sharded.init(0)
    x = jax.device_put(random_input(cfg, 0), sharded.input_sharding)
    prompt = x[:, :PROMPT]
    # No implicit transfer between host and device inside the call: a per-token host loop
    # (a position or a token sent each step, or a token read back) would be refused here.
    with jax.transfer_guard("disallow"):
        gen = generate(sharded, params, prompt, NEW)
    assert gen.tokens.shape == (cfg.batch, NEW) and gen.tokens.dtype == np.int32

    # Teacher forcing: feed prompt + the generated tokens; each position's argmax is the next.
    fed = np.asarray(x).copy()
    fed[:, PROMPT:PROMPT + NEW - 1] = gen.tokens[:, :NEW - 1]
    run = run_decode(sharded, params, jax.device_put(jnp.asarray(fed), sharded.input_sharding),
                     PROMPT)
    head = params["embed"]["table"].T if tied else params["head"]["w"]
    logits = run.output[:, PROMPT - 1:PROMPT + NEW - 1] @ np.asarray(head, np.float32)
    np.testing.assert_array_equal(logits.argmax(-1), gen.tokens)
    assert len(set(gen.tokens.ravel().tolist())) > 1  # not a constant token: a real check


def test_decode_steps_take_the_weights_in_the_model_dtype():
    cfg = resolve_model("tiny-llama").replace(seq=16, dtype="bfloat16")
    sharded = Sharded.build(cfg, parse_layout("tp-pp:tp=2"))
    prefill, one, _ = compile_decode(sharded, 4)
    for program in (prefill, one):
        args = jax.tree.leaves(program.args_info[0][0])  # the parameters
        assert {a.dtype for a in args} == {jnp.dtype(jnp.bfloat16)}
    cast = serving_params(sharded, sharded.init(0))
    assert {a.dtype for a in jax.tree.leaves(cast)} == {jnp.dtype(jnp.bfloat16)}
    w = cast["layers"]["attn"]["wq"]
    assert w.sharding == sharded.param_shardings["layers"]["attn"]["wq"]


def test_the_command_generates_in_one_call():
    r = helix_here(["decode", "--model", "tiny-llama", "--seq", "12", "--prompt-len", "4",
                    "--generate", "5"])
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("generate greedy"))
    assert len(line.split("->")[1].strip(" []").split(",")) == 5
    assert "one device call" in r.stdout and "ms per token" in r.stdout


def test_a_served_step_prices_its_next_token_tied_or_not():
    """A decode step's projection holds the LM head on the last position and its argmax
    (`decode.next_token`), a head of its own or the embedding table transposed: 2·B·D·V matmul
    FLOPs on one device, added to the step's."""
    from helix_jax.analysis.costmodel.hardware import HARDWARE
    from helix_jax.analysis.costmodel.project import project

    for tied in (False, True):
        cfg = resolve_model("tiny-llama").replace(seq=16, tie_embeddings=tied)
        r = project(cfg, parse_layout("single"), HARDWARE["dgx-h100"], mode="decode").to_dict()
        assert r["next_token"]["flops"] == 2 * cfg.batch * cfg.d_model * cfg.vocab
        assert r["next_token"]["seconds"] > 0 and "next token" in r["compiled"]
