"""Model configurations and presets (paper-*, small-*, tiny-*).

A config is a frozen dataclass: the model's shape plus the run shape (batch, seq, dtype) that the
paper fixes alongside it. `resolve_model` turns a preset name and CLI overrides into a checked config.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelConfig:
    """A dense (n_experts == 0) or MoE transformer taking embeddings [B, S, D] to hidden states."""

    name: str
    n_layers: int
    n_heads: int
    head_dim: int
    d_model: int
    d_ff: int
    # 0: the model takes embeddings [B, S, D] (the paper's models). > 0: a token embedding
    # [vocab, D] in front and an untied LM head [D, vocab] with softmax cross-entropy at the end.
    vocab: int = 0
    n_experts: int = 0
    top_k: int = 1
    normalize_top_k: bool = False
    capacity_factor: float = 1.25
    causal: bool = True
    ln_eps: float = 1e-5
    batch: int = 1
    seq: int = 1
    dtype: str = "float32"
    # Largest attention blocks of the blockwise (flash-style) cores: each block is the largest
    # divisor of the sequence it tiles that is <= this; 0 means the whole sequence.
    q_block: int = 0
    kv_block: int = 0

    def __post_init__(self) -> None:
        positive = ("n_layers", "n_heads", "head_dim", "d_model", "d_ff", "batch", "seq", "top_k")
        for field in positive:
            if getattr(self, field) < 1:
                raise ValueError(f"{self.name}: {field} must be >= 1, got {getattr(self, field)}")
        if self.vocab < 0:
            raise ValueError(f"{self.name}: vocab must be >= 0 (0: the model takes embeddings), "
                             f"got {self.vocab}")
        if self.n_experts < 0:
            raise ValueError(f"{self.name}: n_experts must be >= 0, got {self.n_experts}")
        if self.is_moe and self.top_k > self.n_experts:
            raise ValueError(
                f"{self.name}: top_k={self.top_k} is more than n_experts={self.n_experts}; "
                f"use --top-k between 1 and {self.n_experts}")
        if not (math.isfinite(self.capacity_factor) and self.capacity_factor > 0):
            raise ValueError(f"{self.name}: capacity_factor must be a finite number > 0, got "
                             f"{self.capacity_factor}")
        if not (math.isfinite(self.ln_eps) and self.ln_eps > 0):
            raise ValueError(f"{self.name}: ln_eps must be a finite number > 0, got {self.ln_eps}")
        if self.dtype not in DTYPES:
            raise ValueError(f"{self.name}: dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        for field in ("q_block", "kv_block"):
            if getattr(self, field) < 0:
                raise ValueError(f"{self.name}: {field} must be >= 0 (0: the whole sequence)")

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    def replace(self, **changes) -> ModelConfig:
        """A copy with `changes` applied (None values are ignored), re-validated."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_json(self) -> str:
        """The npz contract's `config_json`: every field, so a file describes its own model."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


_PAPER = dict(n_heads=16, head_dim=512, d_model=8192, d_ff=32768, batch=1024, seq=10000,
              dtype="float16", q_block=1024, kv_block=1024)
_SMALL = dict(n_heads=16, head_dim=32, d_model=512, d_ff=2048, batch=16, seq=256)
_TINY = dict(n_heads=16, head_dim=8, d_model=128, batch=16, seq=32)

PRESETS: dict[str, ModelConfig] = {
    c.name: c
    for c in (
        ModelConfig("paper-dense", n_layers=2, **_PAPER),
        ModelConfig("paper-moe", n_layers=4, n_experts=16, **_PAPER),
        ModelConfig("small-dense", n_layers=2, **_SMALL),
        ModelConfig("small-moe", n_layers=4, n_experts=16, **_SMALL),
        ModelConfig("tiny-dense", n_layers=2, d_ff=512, **_TINY),
        ModelConfig("tiny-moe", n_layers=4, n_experts=16, d_ff=256, **_TINY),
    )
}


def resolve_model(name: str, **overrides) -> ModelConfig:
    """The preset `name` (or a model file, see `load_model_file`, when `name` ends in .toml) with
    the non-None `overrides` applied; a clear error for unknown names."""
    if name.endswith(".toml"):
        return load_model_file(name).replace(**overrides)
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(PRESETS)} "
                         f"(or a model file: --model-file FILE.toml)")
    return PRESETS[name].replace(**overrides)


# ----------------------------------------------------------------------------- model files

MODEL_FILE_KEYS = {"name": str, "n_layers": int, "d_model": int, "n_heads": int, "head_dim": int,
                   "d_ff": int, "vocab": int}
MODEL_FILE_OPTIONAL = {"n_experts": int, "top_k": int, "capacity_factor": float, "causal": bool,
                       "ln_eps": float}
# The run shape a model file gets until --batch/--seq/--dtype say otherwise.
MODEL_FILE_RUN = dict(batch=8, seq=1024, dtype="bfloat16", q_block=1024, kv_block=1024)


def load_model_file(path) -> ModelConfig:
    """A GPT-style model from a TOML file with exactly the keys of MODEL_FILE_KEYS (and optionally
    MODEL_FILE_OPTIONAL); every problem is a ValueError naming the file and the key."""
    import tomllib

    from helix_jax.checks import input_file

    path = input_file(path, "model file", "a TOML file")
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"model file {path}: cannot read it ({e.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"model file {path}: not valid TOML ({e})") from None
    allowed = {**MODEL_FILE_KEYS, **MODEL_FILE_OPTIONAL}
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ValueError(f"model file {path}: unknown key(s) {unknown}; allowed: "
                         f"{', '.join(allowed)}")
    missing = [k for k in MODEL_FILE_KEYS if k not in data]
    if missing:
        raise ValueError(f"model file {path}: missing key(s) {missing}")
    for key, value in data.items():
        want = allowed[key]
        ok = (isinstance(value, want) and not (want is int and isinstance(value, bool))) or (
            want is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise ValueError(f"model file {path}: {key} must be {want.__name__}, got "
                             f"{type(value).__name__} {value!r}")
    try:
        return ModelConfig(**{**MODEL_FILE_RUN, **data})
    except ValueError as e:
        raise ValueError(f"model file {path}: {e}") from None


def dump_model_file(cfg: ModelConfig) -> str:
    """The TOML text of `cfg`'s model keys: `load_model_file` reads it back to the same model."""
    def toml(v) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else (
            f'"{v}"' if isinstance(v, str) else repr(v))
    keys = list(MODEL_FILE_KEYS) + [k for k in MODEL_FILE_OPTIONAL
                                    if cfg.is_moe or k in ("causal", "ln_eps")]
    return "".join(f"{k} = {toml(getattr(cfg, k))}\n" for k in keys)
