"""The roofline prices the attention core as one fused kernel only if it finds it: the model and
the roofline share the scope name (`nn.attention.ATTENTION_SCOPE`), and here the kernels it finds
in compiled programs carry exactly the attention's FLOPs."""

import pytest

from helix_jax.analysis.costmodel.hardware import HARDWARE
from helix_jax.analysis.costmodel.roofline import kernels
from helix_jax.analysis.costmodel.terms import score_blocks
from helix_jax.config import resolve_model
from helix_jax.layouts import parse_layout
from helix_jax.model import Sharded
from helix_jax.train import compile_grad_step

CFG = resolve_model("tiny-dense", causal=False)  # no skipped blocks: exact FLOPs


def _attention_flops(text, cfg, layout) -> float:
    ks = kernels(text, HARDWARE["dgx-h100"], 4, score_blocks(cfg, layout))
    return sum(k.flops * k.runs for k in ks if k.kind == "attention")


@pytest.mark.parametrize("spec", ["single", "helix:core=seq_a2a", "tp-pp:tp=4,pp=1"])
def test_forward_attention_kernels_hold_the_attention_flops(spec):
    sharded = Sharded.build(CFG, parse_layout(spec))
    text = sharded.forward_fn().lower(*sharded.abstract_inputs()).compile().as_text()
    c = CFG  # Q·Kᵀ and P·V: 2 x 2·S·S·d per head and sequence, every layer
    total = c.n_layers * 4 * c.batch * c.seq * c.seq * c.n_heads * c.head_dim
    assert _attention_flops(text, CFG, sharded.layout) == total / sharded.layout.devices


def test_a_training_step_keeps_its_attention_in_the_fused_kernel():
    """Forward and backward (dS·K, dSᵀ·Q, Pᵀ·dO, dO·Vᵀ): 3x the forward's attention FLOPs."""
    sharded = Sharded.build(CFG, parse_layout("tp-pp:tp=2,pp=1"))
    text = compile_grad_step(sharded).as_text()
    c = CFG
    forward = c.n_layers * 4 * c.batch * c.seq * c.seq * c.n_heads * c.head_dim / 2
    assert _attention_flops(text, CFG, sharded.layout) == pytest.approx(3 * forward)


@pytest.mark.parametrize("spec", ["single", "cp:cp=2"])
def test_grouped_query_attention_is_found_where_xla_dropped_its_metadata(spec):
    """A Llama-shaped layer (4 query heads per K/V head, 1,024-position blocks): XLA:CPU fuses the
    grouped score and P·V products into dot fusions that keep no op_name, so the roofline follows
    their operands back into the attention core. The kernels it finds hold exactly the
    attention's FLOPs (no causal mask: no skipped blocks), and no weight matmul among them."""
    cfg = resolve_model("llama3-8b").replace(n_layers=1, seq=4096, batch=1, vocab=0,
                                             causal=False)
    sharded = Sharded.build(cfg, parse_layout(spec))
    text = sharded.forward_fn().lower(*sharded.abstract_inputs()).compile().as_text()
    assert any("ynn_fusion" in line and "fusion(" in line and "op_name" not in line
               for line in text.splitlines())  # the case this guards
    total = 4 * cfg.batch * cfg.seq * cfg.seq * cfg.n_heads * cfg.head_dim
    assert _attention_flops(text, cfg, sharded.layout) == total / sharded.layout.devices


def test_the_fused_kernel_keeps_its_score_blocks_on_chip():
    """FlashAttention never writes the [q_block, kv_block] scores to HBM, so an attention dot
    moves only its query, key/value and output tiles: at Llama's head dim 128 and 1,024-position
    blocks every attention kernel is bound by its FLOPs at the fused-attention rate, and a faster
    rate makes attention faster in proportion (priced as writing and reading its score block,
    each dot was bound by HBM whatever the rate)."""
    import dataclasses

    cfg = resolve_model("llama3-8b").replace(n_layers=1, seq=4096, batch=1, vocab=0,
                                             causal=False)
    sharded = Sharded.build(cfg, parse_layout("single"))
    text = sharded.forward_fn().lower(*sharded.abstract_inputs()).compile().as_text()
    hw, blocks = HARDWARE["dgx-h100"], score_blocks(cfg, sharded.layout)

    def attention(h):
        return [k for k in kernels(text, h, 2, blocks) if k.kind == "attention"]

    assert attention(hw) and all(k.seconds == pytest.approx(k.flops / hw.attention_flops_per_s)
                                 for k in attention(hw))
    faster = dataclasses.replace(hw, attention_flops_per_s=740e12)
    seconds = [sum(k.seconds * k.runs for k in attention(h)) for h in (hw, faster)]
    assert seconds[1] == pytest.approx(seconds[0] * 600 / 740)
