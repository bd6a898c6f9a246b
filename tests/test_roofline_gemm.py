"""The roofline's GEMM rule: tile x wave quantization, and split-K for GEMMs whose output tiles do
not fill the SMs, so that a decode step's matrix-vector products are bound by reading their
weights, as GPU libraries run them."""

import math

import pytest

from helix_jax.analysis.costmodel.hardware import HARDWARE
from helix_jax.analysis.costmodel.project import project
from helix_jax.analysis.costmodel.roofline import SPLIT_K_DEPTH, quantization_efficiency
from helix_jax.config import resolve_model
from helix_jax.layouts import parse_layout

H100 = HARDWARE["dgx-h100"]
TILE, SMS = (H100.mm_tile_m, H100.mm_tile_n), H100.sm_count


def test_a_gemm_that_fills_the_sms_is_not_split():
    # 16 x 8 = 128 tiles: one wave of 132 SMs, 4 idle, whatever K is
    assert quantization_efficiency(1, 2048, 2048, TILE, SMS, k=8192) == pytest.approx(128 / 132)
    assert (quantization_efficiency(1, 4096, 4096, TILE, SMS, k=8192)
            == quantization_efficiency(1, 4096, 4096, TILE, SMS))


def test_a_matrix_vector_product_is_split_along_k_to_fill_the_sms():
    tiles = 512 // TILE[1]  # one row against 512 columns: 2 tiles
    unsplit = quantization_efficiency(1, 1, 512, TILE, SMS)
    assert unsplit == pytest.approx(1 / TILE[0] * tiles / SMS)
    splits = SMS // tiles  # 66 slices of 8192 / 66 >= SPLIT_K_DEPTH each
    assert 8192 / splits >= SPLIT_K_DEPTH
    split = quantization_efficiency(1, 1, 512, TILE, SMS, k=8192)
    assert split == pytest.approx(1 / TILE[0] * tiles * splits / SMS)
    # a shallow K cannot be split finer than SPLIT_K_DEPTH: 128 deep -> 2 slices
    assert quantization_efficiency(1, 1, 512, TILE, SMS, k=128) == pytest.approx(2 * unsplit)
    # at the matmul rate the split GEMV costs less than reading its weights: bytes-bound
    flops, weight_bytes = 2 * 512 * 8192, 512 * 8192 * 2
    assert flops / (H100.flops_per_s * split) < weight_bytes / H100.hbm_bytes_per_s
    assert flops / (H100.flops_per_s * unsplit) > weight_bytes / H100.hbm_bytes_per_s


def test_a_batch_one_decode_step_projects_at_its_weight_read():
    """llama3-8b, batch 1, 2048 cached positions, one H200: every matmul reads its weights once
    (the step's compute is the weight bytes of the layers at HBM rate, within the kernels' own
    reads of activations), and the step is the HBM floor. A decode step's projection holds the
    layers' step and the next token (the LM head and its argmax, `decode.next_token`, compiled
    on its own as `decode.generate_fn` runs it), so its matmuls are the layers' and the head's,
    the weights the floor counts but the embedding table (a lookup reads one row)."""
    cfg = resolve_model("llama3-8b", batch=1, seq=2048, dtype="bfloat16")
    r = project(cfg, parse_layout("single"), HARDWARE["dgx-h200"], mode="decode").to_dict()
    p = r["projected"]
    matmul = p["compute_breakdown"]["matmul_seconds"]
    layers = cfg.n_layers * (cfg.d_model * (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim
                             + cfg.n_heads * cfg.head_dim * cfg.d_model + 3 * cfg.d_model * cfg.d_ff)
    weights = (layers + cfg.d_model * cfg.vocab) * 2  # bf16, with the LM head
    assert r["next_token"]["flops"] == 2 * cfg.d_model * cfg.vocab  # batch 1, one position
    assert matmul == pytest.approx(weights / HARDWARE["dgx-h200"].hbm_bytes_per_s, rel=0.05)
    assert p["hbm_bound"] and p["step_seconds"] == pytest.approx(p["hbm_floor_seconds"])
    assert math.isclose(p["tpot_ms"], p["step_seconds"] * 1e3)
