"""The sensitivity study of the hardware constants (experiments/sensitivity.py): every quoted
range holds its profile's value, and a faster constant never makes a projected step slower."""

from helix_jax.analysis.costmodel.hardware import load_hardware
from helix_jax.report.sensitivity import RANGES, markdown, study

TINY = """name = "tiny-validated"
n_layers = 2
d_model = 64
n_heads = 4
head_dim = 16
d_ff = 256
vocab = 128
"""


def test_every_quoted_range_holds_the_profile_value():
    for (profile, field), (low, high, source) in RANGES.items():
        assert low <= getattr(load_hardware(profile), field) <= high, (profile, field)
        assert source


def test_a_faster_constant_never_slows_a_row(tmp_path):
    (tmp_path / "tiny-validated.toml").write_text(TINY)
    row = dict(label="tiny", model="tiny-validated", hardware="dgx-h100", measured=1e-3,
               layout="tp-pp:tp=2,pp=2,dp=2,microbatches=2,schedule=1f1b", batch=8, seq=64,
               dtype="bfloat16", remat="none")
    report = study([row], tmp_path, progress=False)
    variants = report["rows"][0]["variants"]
    assert set(variants) == {f for p, f in RANGES if p == "dgx-h100"}
    for field, ends in variants.items():  # every constant here is a rate: higher is faster
        assert ends["high"] <= ends["low"], field
    assert variants["flops_per_s"]["high"] < variants["flops_per_s"]["low"]
    text = markdown({"generated_by": {"command": "test", "version": "0"}, **report})
    assert "dgx-h100 `nic_bytes_per_s`" in text
