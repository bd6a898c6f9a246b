"""Served inter-token latency (`helix project --mode decode --prompt-tokens I --output-tokens O`,
analysis/costmodel/serving.py) and the FP8 rate of W8A8 matmuls (`--weights float8`).

The ITL is held against arithmetic done here from the two projections it is made of (a decode
step at batch C, a prefill of I tokens at batch 1, each projected on its own); the options'
errors are one line before anything compiles; float8 matmuls are priced at the profile's FP8
rate on dgx-h100 and at the 16-bit rate on dgx-a100 (no FP8 tensor cores), read back from the
kernels' own FLOPs and times.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helix_jax.analysis.costmodel.hardware import HARDWARE
from helix_jax.config import resolve_model
from helix_jax.layouts import parse_layout
from helix_jax.nn import float8
from tests.cli_run import helix_here

CFG = resolve_model("tiny-llama").replace(dtype="bfloat16")
TP2 = "tp-pp:tp=2,pp=1,microbatches=1"


def test_itl_is_the_decode_step_plus_the_amortised_prefill():
    """ITL = step(batch C, context I + O/2) + (C - 1) / (O - 1) x prefill(batch 1, I tokens),
    with both terms projected separately here; at C = 1 no other request joins."""
    from helix_jax.analysis.costmodel.project import project
    from helix_jax.analysis.costmodel.serving import serving_itl

    hw, layout = HARDWARE["dgx-h100"], parse_layout(TP2)
    prompt, out, conc = 24, 9, 4
    decode_cfg = CFG.replace(batch=conc, seq=prompt + out // 2)
    decode = project(decode_cfg, layout, hw, mode="decode", weights="float8")
    prefill = project(CFG.replace(batch=1, seq=prompt), layout, hw, mode="prefill", weights="float8")
    s = serving_itl(decode_cfg, layout, hw, decode, prompt, out, weights="float8")
    step, pre = decode.projected.step_seconds, prefill.projected.step_seconds
    assert s["decode_step_ms"] == pytest.approx(step * 1e3)
    assert s["prefill_ms"] == pytest.approx(pre * 1e3)
    assert s["amortised_prefill_ms"] == pytest.approx(3 / 8 * pre * 1e3)
    assert s["itl_ms"] == pytest.approx((step + 3 / 8 * pre) * 1e3)
    assert s["decode_context"] == 28 and s["concurrency"] == conc
    alone = project(CFG.replace(batch=1, seq=prompt + out // 2), layout, hw, mode="decode")
    s1 = serving_itl(CFG.replace(batch=1, seq=prompt + out // 2), layout, hw, alone, prompt, out)
    assert s1["amortised_prefill_ms"] == 0 and s1["itl_ms"] == pytest.approx(
        alone.projected.step_seconds * 1e3)


def test_the_command_reports_itl_and_the_bare_step(tmp_path):
    """`helix project --mode decode --prompt-tokens --output-tokens`: the JSON keeps the bare
    decode step (projected.step_seconds) and adds serving.itl_ms; --context defaults to the
    mean context I + O/2."""
    out = tmp_path / "p.json"
    r = helix_here(["project", "--model", "tiny-llama", "--layout", TP2, "--hardware", "dgx-h100",
                    "--mode", "decode", "--batch", "3", "--dtype", "bfloat16", "--weights",
                    "float8", "--prompt-tokens", "16", "--output-tokens", "5", "--json", str(out)])
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    s = d["serving"]
    assert d["seq"] == 16 + 5 // 2 == s["decode_context"]
    assert s["decode_step_ms"] == pytest.approx(d["projected"]["step_seconds"] * 1e3)
    assert s["itl_ms"] == pytest.approx(s["decode_step_ms"] + 2 / 4 * s["prefill_ms"])
    assert s["itl_ms"] > s["decode_step_ms"] and "ITL" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--prompt-tokens", "16"], "--prompt-tokens and --output-tokens go together"),
    (["--output-tokens", "5"], "--prompt-tokens and --output-tokens go together"),
    (["--mode", "prefill", "--prompt-tokens", "16", "--output-tokens", "5"],
     "use --mode decode (got --mode prefill)"),
    (["--prompt-tokens", "0", "--output-tokens", "5"], "--prompt-tokens must be at least 1"),
    (["--prompt-tokens", "16", "--output-tokens", "1"], "--output-tokens must be at least 2"),
    (["--layout", "dp:dp=2", "--batch", "2", "--prompt-tokens", "16", "--output-tokens", "5"],
     "batch"),
])
def test_bad_serving_options_are_one_line_errors(args, message):
    base = ["project", "--model", "tiny-llama", "--hardware", "dgx-h100"]
    if "--mode" not in args:
        base += ["--mode", "decode"]
    r = helix_here([*base, *args])
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_w8a8_matmul_rounds_both_operands():
    """float8.matmul of a float8 weight equals the einsum of the activation rounded through
    e4m3 with one scale and the weight's q · scale, and differs from the weight-only product."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 3, 16)), jnp.float32)
    w = float8.quantize(jnp.asarray(rng.standard_normal((16, 4, 8)), jnp.float32),
                        ("embed", "heads", "head_dim"))
    got = np.asarray(float8.matmul("bsD,Dhk->bshk", x, w, jnp.float32))
    s = float(np.abs(np.asarray(x)).max()) / 448
    xq = np.asarray(jnp.asarray(np.asarray(x) / s).astype(jnp.float8_e4m3fn), np.float64) * s
    want = np.einsum("bsD,Dhk->bshk", xq, np.asarray(w.dequantize(jnp.float32), np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    weight_only = np.einsum("bsD,Dhk->bshk", np.asarray(x), np.asarray(w.dequantize(jnp.float32)))
    assert np.abs(got - weight_only).max() > 1e-3


def _matmul_kernels(hw_name: str) -> list:
    """The priced matmul kernels of tiny-llama's float8 prefill on tp=2 (and the KernelShapes
    saying which are W8A8)."""
    from helix_jax.analysis.costmodel.compiler import DIRECT
    from helix_jax.analysis.costmodel.roofline import kernel_shapes, kernels
    from helix_jax.analysis.costmodel.terms import analysed_config, build_sharded

    cfg = CFG.replace(batch=1, seq=64)
    sharded = build_sharded(analysed_config(cfg), parse_layout(TP2), 1, weights="float8")
    hlo = DIRECT.step(sharded, "prefill").as_text()
    shapes = {k.name: k for k in kernel_shapes(hlo, 2)}
    return [(shapes[k.name], k) for k in kernels(hlo, HARDWARE[hw_name], 2)
            if k.kind == "matmul"]


@pytest.mark.parametrize("hw_name", ["dgx-h100", "dgx-a100"])
def test_float8_matmuls_run_at_the_fp8_rate_where_the_gpu_has_one(hw_name):
    """Every weight matmul of the float8 prefill (q, k, v, o, w1, w2, w3 per layer) is W8A8, and
    its compute time is FLOPs / (rate x quantization efficiency) at dgx-h100's FP8 rate (twice
    its 16-bit one, from the datasheet's 1,979 against 989 TFLOP/s) or at dgx-a100's 16-bit
    rate (it has no FP8)."""
    from helix_jax.analysis.costmodel.roofline import quantization_efficiency

    hw = HARDWARE[hw_name]
    pairs = _matmul_kernels(hw_name)
    fp8 = [(s, k) for s, k in pairs if s.fp8]
    assert len(fp8) >= 7 and all(s.runs == CFG.n_layers for s, _ in fp8)
    rate = hw.fp8_flops_per_s if hw_name == "dgx-h100" else hw.flops_per_s
    if hw_name == "dgx-h100":
        assert hw.fp8_flops_per_s == pytest.approx(hw.flops_per_s * 1979 / 989)
    else:
        assert hw.fp8_flops_per_s == 0
    for s, k in fp8:
        b, m, n, depth = s.gemm
        eff = quantization_efficiency(b, m, n, (hw.mm_tile_m, hw.mm_tile_n), hw.sm_count, depth)
        assert k.seconds == pytest.approx(max(s.flops / (rate * eff),
                                              s.bytes / hw.hbm_bytes_per_s))


def test_the_16_bit_program_has_no_fp8_matmul():
    """Without --weights float8 no matmul is priced at the FP8 rate."""
    from helix_jax.analysis.costmodel.compiler import DIRECT
    from helix_jax.analysis.costmodel.roofline import kernel_shapes
    from helix_jax.analysis.costmodel.terms import analysed_config, build_sharded

    cfg = CFG.replace(batch=1, seq=64)
    sharded = build_sharded(analysed_config(cfg), parse_layout(TP2), 1)
    hlo = DIRECT.step(sharded, "prefill").as_text()
    assert not any(k.fp8 for k in kernel_shapes(hlo, 2))


def test_float8_moe_decode_runs_within_tolerance():
    """The routed experts' matmuls (nn/moe.py) run W8A8 too: tiny-mixtral's prefill + decode
    on one device (its hidden states) stays within twice the dense float8 TOLERANCE of its
    16-bit path, since rounding can flip a top-2 router's choice of expert (measured 0.10,
    seed 0), and above the 0.01 that would mean float8 was not used."""
    from helix_jax.decode import run_decode
    from helix_jax.model import Sharded, random_input
    from tests.test_fp8_weights import PROMPT, TOLERANCE

    cfg = resolve_model("tiny-mixtral").replace(seq=8, dtype="bfloat16", capacity_factor=64.0)
    outs = {}
    for weights in ("model", "float8"):
        sharded = Sharded.build(cfg, parse_layout("single"), weights=weights)
        params = sharded.serving_params(jax.device_get(sharded.init(0)))
        x = random_input(cfg, 0)
        outs[weights] = np.asarray(run_decode(sharded, params, x, PROMPT).output, np.float32)
    err = np.linalg.norm(outs["float8"] - outs["model"]) / np.linalg.norm(outs["model"])
    assert 0.01 < err <= 2 * TOLERANCE, err
