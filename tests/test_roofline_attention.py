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
