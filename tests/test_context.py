"""Context parallelism (`cp:cp=K`, `tp-pp:...,cp=K`): every layer's sequence split over K shards
of two chunks each, keys and values around a ring or all-gathered; and expert parallelism inside
tp-pp (`ep=K` over data and context ranks). Checked against `single` in outputs and gradients,
and the collectives read from the compiled HLO."""

import jax.numpy as jnp
import numpy as np
import pytest

from helix_jax import resolve_model, testing
from helix_jax.comm import Comm
from helix_jax.counts import param_counts
from helix_jax.layouts import parse_layout
from helix_jax.parallel import context
from tests.cli_run import helix_here


@pytest.mark.parametrize("K", [1, 2, 4])
def test_the_shards_chunks_put_back_in_order_are_the_sequence(K):
    """select() on each shard, laid out shard after shard, then natural_order: the identity;
    and positions() names the positions select() picked."""
    S = 4 * K
    x = np.arange(2 * S).reshape(2, S)
    comm = Comm(parse_layout(f"cp:cp={K}") if K > 1 else parse_layout("single"))
    if K == 1:
        assert np.array_equal(context.select(x, comm), x)
        return
    held = []
    for shard in range(K):
        a, b = context.chunk_starts(shard, S // (2 * K), K)
        chunks = np.concatenate([x[:, a:a + S // (2 * K)], x[:, b:b + S // (2 * K)]], axis=1)
        held.append(chunks)
    assert np.array_equal(context.natural_order(jnp.asarray(np.concatenate(held, 1)), K), x)
    # every shard holds as many causally visible (query, key) pairs as any other
    pairs = [sum(p + 1 for p in range(S) if p // (S // (2 * K)) in (s, 2 * K - 1 - s))
             for s in range(K)]
    assert len(set(pairs)) == 1


# Every family at cp = 4 (chunks that are neither first nor last), ring and all-gather, causal and
# not (tiny-dense composed with dp = 2); then the compositions with tp, pp, sp, dp and ep.
MOE = {"capacity_factor": 16.0}  # no token dropped, so a split cannot change which are
CASES = [
    (model, f"cp:cp=4{dp}{how}", {**extra, **({} if causal else {"causal": False})})
    for model, dp, extra in (("tiny-llama", "", {}), ("tiny-mixtral", "", MOE),
                             ("tiny-dense", ",dp=2", {}))
    for how in ("", ",attention=allgather") for causal in (True, False)
] + [
    ("tiny-llama", "tp-pp:tp=2,pp=2,cp=2", {}),
    ("tiny-mixtral", "tp-pp:tp=2,pp=2,cp=2", MOE),
    ("tiny-dense", "tp-pp:tp=2,pp=2,cp=2,attention=allgather", {}),
    ("tiny-llama", "tp-pp:tp=2,pp=1,cp=2,sp=true,dp=2,attention=allgather", {}),
    ("tiny-dense", "tp-pp:tp=2,pp=1,cp=2,dp=2", {}),
    # expert parallelism inside TP x PP x DP: over data ranks, and over data x context ranks
    ("tiny-mixtral", "tp-pp:tp=2,pp=2,dp=4,ep=4", MOE),
    ("tiny-mixtral", "tp-pp:tp=2,pp=1,cp=2,dp=2,ep=4", MOE),
]


@pytest.mark.parametrize("model, layout, overrides", CASES,
                         ids=[f"{m}-{lay}" + ("-nc" if o.get("causal") is False else "")
                              for m, lay, o in CASES])
def test_context_parallel_layouts_match_single(model, layout, overrides):
    testing.assert_layout_equivalent(model, layout, **overrides)


def _ring(K: int, shift: int = 1) -> tuple[tuple[int, int], ...]:
    return tuple((i, (i + shift) % K) for i in range(K))


def _tiny_llama(K: int = 4):
    cfg = resolve_model("tiny-llama")
    kv = (2, cfg.batch, cfg.seq // K, cfg.kv_heads, cfg.head_dim)  # one shard's keys and values
    return cfg, K, kv


def test_ring_passes_one_kv_chunk_k_minus_1_times_per_layer_each_way():
    """tiny-llama. Forward at cp = 4: per layer K − 1 = 3 collective-permutes around the ring of
    one array holding a shard's keys and values [2, B, S/K, G, d], and one all-gather of the
    output [B, 2, c, D] that puts the chunks back in order. Training step at cp = 2: the permutes,
    their transposes the other way round in the backward, and each gradient summed once over
    the 4 context shards (all-reduces carrying every parameter's float32 gradient once, and the
    per-token loss on its way back into order)."""
    cfg, K, kv = _tiny_llama()
    L, c = cfg.n_layers, cfg.seq // (2 * K)
    everyone = (tuple(range(K)),)
    records = testing.assert_collectives(cfg, f"cp:cp={K}", [
        {"op": "collective-permute", "groups": _ring(K), "shape": kv, "count": (K - 1) * L},
        {"op": "all-gather", "groups": everyone, "shape": (cfg.batch, 2, c, cfg.d_model),
         "count": 1},
    ])
    assert records[0].payload_bytes == 4 * np.prod(kv)
    cfg, K, kv = _tiny_llama(K=2)  # the training step at cp = 2: half the compile
    records = testing.collectives(cfg, f"cp:cp={K}", mode="train")
    permutes = sorted((tuple(sorted(r.groups)), r.count) for r in records
                      if r.op == "collective-permute")
    assert permutes == sorted((tuple(sorted(_ring(K, shift))), (K - 1) * L) for shift in (1, -1))
    assert all(r.shape == kv for r in records if r.op == "collective-permute")
    reduced = [r for r in records if r.op != "collective-permute"]
    assert {(r.op, r.group_size) for r in reduced} == {("all-reduce", K)}
    per_token_loss = cfg.batch * cfg.seq  # put back in order (XLA does it as an all-reduce)
    assert sum(r.payload_bytes * r.count for r in reduced) == 4 * (param_counts(cfg)[0]
                                                                   + per_token_loss)


def test_allgather_gathers_keys_and_values_once_per_layer():
    """allgather (cp = 2): one all-gather of [2, B, S/K, G, d] per layer (and the output's
    reordering); in the training step its transpose, one reduce-scatter per layer, no permute."""
    cfg, K, kv = _tiny_llama(K=2)
    L, c = cfg.n_layers, cfg.seq // (2 * K)
    layout = f"cp:cp={K},attention=allgather"
    testing.assert_collectives(cfg, layout, [
        {"op": "all-gather", "group_size": K, "shape": kv, "count": L},
        {"op": "all-gather", "group_size": K, "shape": (cfg.batch, 2, c, cfg.d_model),
         "count": 1},
    ])
    records = testing.collectives(cfg, layout, mode="train")
    gathered = (kv[0], kv[1], kv[2] * K, *kv[3:])
    assert sorted((r.op, r.count, r.shape) for r in records if r.op != "all-reduce") == [
        ("all-gather", L, kv), ("reduce-scatter", L, gathered)]


@pytest.mark.parametrize("layout, words", [
    ("cp:cp=4", "context parallelism cuts seq=12 into 2 x cp = 8 chunks; choose a seq divisible "
                "by 8"),
    ("tp-pp:tp=2,pp=1,cp=2,sp=true", "into 2 x cp = 4 chunks, each split 2 ways by sp; choose a "
                                     "seq divisible by 8"),
    ("cp:cp=2,attention=ulysses", "attention='ulysses' is not one of ring, allgather"),
    ("tp-pp:tp=2,pp=1,cp=2,dp=2,ep=3", "choose ep = 2 x k"),
    ("tp-pp:tp=2,pp=1,dp=2,ep=2", "ep=2 splits experts, but tiny-llama is a dense model"),
])
def test_bad_context_layouts_are_one_line_errors(layout, words, tmp_path):
    seq = "12" if "ep=" not in layout else "16"
    r = helix_here(["forward", "--model", "tiny-llama", "--seq", seq, "--layout", layout],
                   tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and words in r.stderr, r.stderr


@pytest.mark.parametrize("layout, reorder_op", [("cp:cp=4", "all-gather"),
                                               ("cp:cp=4,attention=allgather", "all-gather")])
def test_the_cost_models_formula_counts_the_context_collectives(layout, reorder_op):
    """`formulas.expected_comm_bytes` (the cross-check of every projection) against the compiled
    forward pass: the ring's or all-gather's K/V bytes exactly; the program has one collective
    more, the output's reordering (one all-gather of the whole output), which the formula leaves
    out."""
    from helix_jax.analysis import load_hardware
    from helix_jax.analysis.costmodel.project import project

    cfg = resolve_model("tiny-llama")
    r = project(cfg, parse_layout(layout), load_hardware("dgx-h100"), batch_chunks=1).to_dict()
    got, want = dict(r["comm_bytes_by_op"]), r["expected_comm_bytes_by_op"]
    got[reorder_op] -= cfg.batch * cfg.seq * cfg.d_model * 4
    assert {op: b for op, b in got.items() if b} == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("args, words", [
    (["forward", "--partitioner", "gspmd", "--layout", "cp:cp=2"],
     "run under --partitioner shard_map only"),
    (["project", "--mode", "train", "--layout", "helix:m=2,n=4,dp=16", "--batch", "16"],
     "composed only for tp-pp and cp layouts"),  # 128 devices: composed
])
def test_what_context_parallelism_does_not_do_yet_is_a_clear_error(args, words, tmp_path):
    r = helix_here([*args, "--model", "tiny-llama"], tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and words in r.stderr, r.stderr


@pytest.mark.parametrize("spec", ["cp:cp=2", "tp-pp:tp=2,pp=1,cp=2,attention=allgather"])
def test_decode_on_a_context_parallel_layout_equals_the_reference(spec, tmp_path):
    """Prefill (P = 1, S/2, S − 1) and decode on a cp layout: the float64 reference holds. The
    step runs without the sequence split (the cache replicated over `context`), so a model
    trained with cp is served on the same mesh."""
    from tests.test_decode import _check

    _check("tiny-llama", spec, tmp_path)


def test_the_ring_is_priced_as_hidden_behind_the_attention_it_overlaps():
    """Each K/V pass hides behind one ring step's attention: hidden = passes x min(one pass, one
    step's attention), with the roofline's attention spread over the K steps of each layer. At
    full size (a Llama-3-8B layer, 16K tokens, cp = 4) a step's attention outlasts its pass, so
    the ring is all hidden; all-gather gets no such credit."""
    from helix_jax.analysis import load_hardware
    from helix_jax.analysis.costmodel.project import project

    hw = load_hardware("dgx-h100")
    cfg = resolve_model("llama3-8b").replace(n_layers=1, seq=16384, batch=1, vocab=0)
    K = 4
    whole = project(cfg, parse_layout(f"cp:cp={K}"), hw, batch_chunks=1)
    r = whole.projected
    passes = [c for c in whole.collectives if c["op"] == "collective-permute"]
    count = sum(c["count"] for c in passes)
    assert count == (K - 1) * cfg.n_layers
    assert r.ring_comm_seconds == pytest.approx(sum(c["seconds"] for c in passes))
    step = r.compute_breakdown["attention_seconds"] / (count * K / (K - 1))
    assert step > r.ring_comm_seconds / count  # long attention steps: nothing left exposed
    assert r.ring_hidden_seconds == pytest.approx(r.ring_comm_seconds)
    assert r.exposed_comm_seconds == pytest.approx(r.comm_seconds - r.ring_comm_seconds)
    gathered = project(cfg, parse_layout(f"cp:cp={K},attention=allgather"), hw,
                       batch_chunks=1).projected
    assert gathered.ring_comm_seconds is None
    assert gathered.exposed_comm_seconds == pytest.approx(gathered.comm_seconds)


def test_expert_parallelism_inside_tp_pp_is_two_all_to_alls_per_moe_layer_in_the_ep_group():
    """tiny-mixtral on tp 2 x cp 2 x dp 2 with ep 4 (mesh expert 2 x context 2 x tensor 2):
    each MoE layer dispatches and combines by one all-to-all each among the 4 devices of a
    tensor rank (2 data ranks x 2 context ranks), of [E/ep, C, D] per destination, C the
    capacity of one source shard's tokens (B/2 sequences x S/2 positions)."""
    import math

    cfg = resolve_model("tiny-mixtral", capacity_factor=16.0)
    E, ep = cfg.n_experts, 4
    tokens = cfg.batch // 2 * cfg.seq // 2
    C = math.ceil(cfg.capacity_factor * tokens * cfg.top_k / E)
    records = testing.collectives(cfg, "tp-pp:tp=2,pp=1,cp=2,dp=2,ep=4,microbatches=1")
    a2a = [r for r in records if r.op == "all-to-all"]
    assert [(r.groups, r.count, r.shape) for r in a2a] == [
        (((0, 2, 4, 6), (1, 3, 5, 7)), 2 * cfg.n_layers, (E // ep, C, cfg.d_model))]
    assert a2a[0].payload_bytes == ep * 4 * (E // ep) * C * cfg.d_model


@pytest.mark.parametrize("S, K, qb, kb", [(32, 4, 0, 0), (64, 2, 4, 8), (256, 4, 8, 4)])
def test_the_share_of_causal_blocks_that_run_is_counted_from_the_positions(S, K, qb, kb):
    """visible_share against a count over the positions each shard holds
    (context.shard_positions): a key block runs unless its first key is past the query block's
    last query."""
    from helix_jax.nn.attention import block_size, visible_share

    c = S // (2 * K)
    q, k = block_size(c, qb), block_size(c, kb)
    pos = [np.asarray(context.shard_positions(i, c, K)) for i in range(K)]
    runs = total = 0
    for i in range(K):
        for j in range(K):
            for a in range(0, 2 * c, q):
                for b in range(0, 2 * c, k):
                    total += 1
                    runs += pos[j][b:b + k].min() <= pos[i][a:a + q].max()
    assert visible_share(S, K, qb, kb) == runs / total
