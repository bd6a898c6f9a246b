"""FP8 serving weights (`--weights float8`, helix_jax/nn/float8.py; W8A8: the matmuls' activations
are rounded to float8 too): the round trip is bounded per output channel; forward, prefill and
decode of tiny-llama on every layout the decode tests cover
stay within TOLERANCE of the 16-bit path; the decode projection's HBM floor reads the stored
float8 bytes and scales, and its matmuls read one byte per weight and activation element.

TOLERANCE bounds the relative error ||logits_fp8 - logits_16|| / ||logits_16|| (Frobenius, over
the whole batch and sequence) of tiny-llama computed in bfloat16, the logits being the final
hidden states times each path's own LM head. Measured (seq 8, prompt 4, seed 0), weight-only:
0.051 on every layout (0.0506 to 0.0510); W8A8 (activations rounded too): 0.068 to 0.071 on
every layout, for the forward pass and for the prefill + decode alike (e4m3's 3 mantissa bits
round each operand by up to 2^-4, about 2.5% RMS, through two layers and the head); the
bfloat16 path on each layout is within 0.0073 of the one on `single`. TOLERANCE = 0.1 leaves
1.4x margin; an error under 0.02 would mean the float8 weights were not used, which the test
refuses too.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helix_jax.config import resolve_model
from helix_jax.decode import run_decode
from helix_jax.layouts import parse_layout
from helix_jax.model import Sharded, logical_axes, param_shapes, random_input
from helix_jax.nn import float8
from tests import reference_np
from tests.cli_run import helix_here

TOLERANCE = 0.1
S, PROMPT = 8, 4
CFG = resolve_model("tiny-llama").replace(seq=S, dtype="bfloat16")
# The tiny-llama layouts whose decode tests/test_families.py and tests/test_generate.py check.
LAYOUTS = ("single", "tp-pp", "helix", "helix:core=qk_gather,m=2,n=8",
           "helix:core=seq_a2a,m=2,n=8", "kvp:kvp=4", "kvp:kvp=2,tp=4", "dp:fsdp=true",
           "tp-pp:tp=2,pp=2")


def test_round_trip_error_is_bounded_per_output_channel():
    """|W - q·scale| <= 2^-4 |W| + 2^-10 · scale for every element, with one scale per output
    channel (amax / 448), channels 10^±3 apart in size and one all zero: a per-tensor scale
    would flush the small channels and fail the bound."""
    rng = np.random.default_rng(0)
    sizes = 10.0 ** rng.uniform(-3, 3, size=(1, 1, 8, 4))  # W_q-like [L, D, H, d]
    w = rng.standard_normal((2, 64, 8, 4)) * sizes
    w[:, :, 0, 0] = 0.0
    axes = ("layers", "embed", "heads", "head_dim")
    f8 = float8.quantize(jnp.asarray(w, jnp.float32), axes)
    assert f8.q.dtype == jnp.float8_e4m3fn and f8.scale.shape == (2, 1, 8, 4)
    amax = np.abs(w).max(axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(f8.scale), np.where(amax > 0, amax / 448, 1.0),
                               rtol=1e-6)
    back = np.asarray(f8.dequantize(jnp.float32), np.float64)
    err = np.abs(back - w)
    assert np.all(err <= 2.0**-4 * np.abs(w) + 2.0**-10 * np.asarray(f8.scale) + 1e-30)
    assert np.all(back[:, :, 0, 0] == 0)
    # W_o [L, H, d, D] is contracted over its heads and head dim: one scale per model dim
    assert float8.quantize(jnp.ones((2, 8, 4, 64)), ("layers", "heads", "head_dim",
                                                      "embed")).scale.shape == (2, 1, 1, 64)


def _logits(h, head) -> np.ndarray:
    return np.asarray(h, np.float32) @ np.asarray(float8.operand(head, jnp.float32))


@pytest.fixture(scope="module")
def sixteen_bit():
    """The 16-bit path on one device: forward and prefill + decode logits, and the masters."""
    sharded = Sharded.build(CFG, parse_layout("single"))
    params = jax.device_get(sharded.init(0))
    x = jax.device_put(random_input(CFG, 0), sharded.input_sharding)
    served = sharded.serving_params(params)
    head = jax.device_get(served["head"]["w"])
    forward = _logits(sharded.forward_fn()(params, x)[0], head)
    decoded = _logits(run_decode(sharded, params, x, PROMPT).output, head)
    return params, forward, decoded


@pytest.mark.parametrize("spec", LAYOUTS)
def test_float8_logits_stay_within_tolerance_of_16_bit(spec, sixteen_bit):
    masters, want_forward, want_decoded = sixteen_bit
    sharded = Sharded.build(CFG, parse_layout(spec), weights="float8")
    served = sharded.serving_params(sharded.place(masters))
    assert served["layers"]["attn"]["wk"].q.dtype == jnp.float8_e4m3fn
    x = jax.device_put(random_input(CFG, 0), sharded.input_sharding)
    head = jax.device_get(served["head"]["w"])
    forward = _logits(sharded.forward_fn()(served, x)[0], head)
    decoded = _logits(run_decode(sharded, served, x, PROMPT).output, head)
    for what, got, want in (("forward", forward, want_forward),
                            ("prefill + decode", decoded, want_decoded)):
        err = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert 0.02 < err <= TOLERANCE, (spec, what, err)


class _Recording:
    """A compiler that keeps the step programs it compiles (`analysis.compiler.Compiler`)."""

    def __init__(self):
        from helix_jax.analysis.costmodel.compiler import DIRECT

        self.direct, self.programs = DIRECT, []

    def step(self, sharded, mode):
        self.programs.append(self.direct.step(sharded, mode))
        return self.programs[-1]

    def head(self, sharded):  # the next token's LM head: its own program, not recorded
        return self.direct.head(sharded)


def test_the_decode_projection_reads_the_stored_float8_bytes():
    """tiny-llama on tp=2: the HBM floor's weight bytes are, per device, one byte per matmul
    weight element plus a float32 scale per output channel plus the rest in 16 bits (counted
    here from the parameter shapes and the layout's split of each logical axis); the matmul
    kernels read W·(1 + 4/K) bytes of a weight of W elements contracted over K where the 16-bit
    program reads 2W, and no other kernel is added."""
    from helix_jax.analysis.costmodel.hardware import HARDWARE
    from helix_jax.analysis.costmodel.project import project
    from helix_jax.analysis.costmodel.roofline import kernel_shapes

    cfg = resolve_model("tiny-llama").replace(seq=64, batch=2, dtype="bfloat16")
    layout = parse_layout("tp-pp:tp=2,pp=1,microbatches=1")
    runs = {}
    for weights in ("model", "float8"):
        compiler = _Recording()
        p = project(cfg, layout, HARDWARE["dgx-h100"], mode="decode", weights=weights,
                    compiler=compiler)
        runs[weights] = p, compiler.programs[0].as_text()

    def local(shape, axes):  # this device's part of each dim
        return [n // layout.size(a) if a else n for n, a in zip(shape, axes)]

    sixteen = fp8 = saved = 0.0
    shapes, logical = param_shapes(cfg), logical_axes(cfg)
    for path, s in jax.tree_util.tree_leaves_with_path(shapes):
        axes = logical
        for key in path:
            axes = axes[key.key]
        n = int(np.prod(local(s.shape, axes)))
        sixteen += 2 * n
        if float8.is_matmul_weight(path):
            k = int(np.prod([local(s.shape, axes)[i] for i in float8.contracted_dims(axes)]))
            fp8 += n + 4 * n // k
            if "layers" in axes:  # the step ends at the hidden states: no head matmul
                saved += n * (1 - 4 / k)  # over its layers' matmuls, K-deep each
                # W8A8: each layer's matmul reads its [batch, K] activation in one byte
                saved += cfg.batch * k * cfg.n_layers
        else:
            fp8 += 2 * n
    model, f8 = runs["model"][0], runs["float8"][0]
    assert model.projected.hbm_floor_weight_bytes == sixteen
    assert f8.projected.hbm_floor_weight_bytes == fp8
    assert 0.5 < fp8 / sixteen < 0.6  # tiny-llama's 16-bit embedding table is 1/10 of it
    assert f8.projected.hbm_floor_seconds < model.projected.hbm_floor_seconds
    assert f8.weights == "float8" and "float8 weights" in f8.extended_by_formula[0]
    assert f8.to_dict()["weights"] == "float8" and model.to_dict()["weights"] == "model"

    def read(hlo, kind):
        return sum(k.bytes * k.runs for k in kernel_shapes(hlo, 2) if k.kind == kind)

    (_, hlo16), (_, hlo8) = runs["model"], runs["float8"]
    # W8A8's dynamic activation scales add passes over the activations (their amax)
    assert read(hlo8, "memory") >= read(hlo16, "memory")
    assert read(hlo16, "matmul") - read(hlo8, "matmul") == pytest.approx(saved)


@pytest.mark.parametrize("args, message", [
    (["train", "--weights", "float8"], "--weights float8 is FP8 for serving"),
    (["project", "--mode", "train", "--weights", "float8"],
     "--weights float8 is priced for serving: use --mode prefill or decode"),
    (["decode", "--prompt-len", "4", "--weights", "fp8"],
     "argument --weights: invalid choice: 'fp8'"),
])
def test_bad_weights_are_one_line_errors(args, message):
    r = helix_here([*args, "--model", "tiny-llama"])
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_the_decode_command_serves_float8_weights(tmp_path):
    """`helix decode --weights float8`: prefill, decode and greedy generation run, and `--out`
    holds the weights the run computed with (q · scale): the float64 reference on them differs
    from the run's outputs only by the activations' float8 rounding (W8A8), within TOLERANCE
    and above float32 precision."""
    out = tmp_path / "d.npz"
    r = helix_here(["decode", "--model", "tiny-llama", "--layout", "tp-pp:tp=2,pp=2", "--seq",
                    "8", "--prompt-len", "4", "--generate", "3", "--weights", "float8",
                    "--out", str(out)])
    assert r.returncode == 0, r.stderr
    assert "weights  float8" in r.stdout and "generate 3 tokens" in r.stdout
    p, x, y, c = reference_np.load_npz(out)
    assert 1e-3 < reference_np.relative_error(reference_np.forward(p, x, c), y) <= TOLERANCE
