"""`--price-attention unfused`: the attention core priced as the kernels of runs before flash
attention (scores through HBM), against the default fused flash kernel."""

import pytest

from helix_jax.analysis.costmodel.hardware import HARDWARE
from helix_jax.analysis.costmodel.project import project
from helix_jax.config import resolve_model
from helix_jax.layouts import parse_layout
from tests.cli_run import helix_here

CFG = resolve_model("tiny-llama")
LAYOUT = "tp-pp:tp=2,pp=1,microbatches=1"


@pytest.fixture(scope="module")
def both():
    return {k: project(CFG, parse_layout(LAYOUT), HARDWARE["dgx-a100"], mode="train",
                       attention_pricing=k).to_dict() for k in ("flash", "unfused")}


def test_unfused_attention_moves_its_scores_through_hbm(both):
    flash, unfused = (both[k]["projected"]["compute_breakdown"] for k in ("flash", "unfused"))
    assert flash["attention_seconds"] > 0 and unfused["attention_seconds"] == 0
    # at least the forward's probabilities written once and read once per layer, f32 here:
    # [B, heads per device, S, S] per layer
    probs = CFG.batch * (CFG.n_heads // 2) * CFG.seq * CFG.seq * 4
    more = memory_bytes(both["unfused"]) - memory_bytes(both["flash"])
    assert more >= 2 * probs * CFG.n_layers
    # the same program: the FLOPs do not change, only how they are priced
    assert both["flash"]["flops_per_device"] == both["unfused"]["flops_per_device"]
    assert "unfused" in both["unfused"]["attention_kernel"]["priced"]
    assert "flash" in both["flash"]["attention_kernel"]["priced"]


def memory_bytes(p: dict) -> float:
    """The HBM bytes of the memory-bound kernels, from their time on the profile."""
    return p["projected"]["compute_breakdown"]["memory_seconds"] * HARDWARE[
        "dgx-a100"].hbm_bytes_per_s


def test_unfused_pricing_refused_where_it_does_not_apply():
    done = helix_here(["project", "--model", "tiny-llama", "--mode", "decode",
                       "--price-attention", "unfused"])
    assert done.returncode == 2
    assert "--price-attention unfused applies to forward and train" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
