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

# The range of each size a model can have: beyond these no run, compile or projection is
# possible (a dimension past 2**20 or so already makes every weight matrix larger than any
# device), so a bad value is refused before anything is built. The largest published models
# sit far inside (Llama 3.1 405B: 126 layers, D 16384, F 53248, vocab 128256).
LIMITS: dict[str, tuple[int, int]] = {
    "n_layers": (1, 4096), "n_heads": (1, 4096), "head_dim": (1, 4096),
    "d_model": (1, 2**20), "d_ff": (1, 2**22), "vocab": (0, 2**22), "n_experts": (0, 4096),
    "top_k": (1, 4096), "batch": (1, 2**20), "seq": (1, 2**24), "q_block": (0, 2**24),
    "kv_block": (0, 2**24),
}


def _short(value) -> str:
    from helix_jax.errors import quote

    if isinstance(value, int | float) and len(str(value)) <= 24:
        return str(value)
    return quote(value, 24)


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
        for field, (lo, hi) in LIMITS.items():
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                what = "vocab = 0: the model takes embeddings; " if field == "vocab" else ""
                raise ValueError(f"{self.name}: {field} must be a whole number from {lo} to "
                                 f"{hi:,} ({what}larger cannot be built), got {_short(value)}")
        if self.is_moe and self.top_k > self.n_experts:
            raise ValueError(
                f"{self.name}: top_k={self.top_k} is more than n_experts={self.n_experts}; "
                f"use --top-k between 1 and {self.n_experts}")
        if not (math.isfinite(self.capacity_factor) and 0 < self.capacity_factor <= 1024):
            raise ValueError(f"{self.name}: capacity_factor must be a number in (0, 1024], got "
                             f"{_short(self.capacity_factor)}")
        if not (math.isfinite(self.ln_eps) and 0 < self.ln_eps <= 1):
            raise ValueError(f"{self.name}: ln_eps must be a number in (0, 1], got "
                             f"{_short(self.ln_eps)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"{self.name}: dtype {_short(self.dtype)} is not one of "
                             f"{', '.join(DTYPES)}")

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
        from helix_jax.errors import unknown_name

        raise ValueError(f"{unknown_name('model', name, PRESETS)}; `helix models` lists the "
                         f"presets (or give a model file: --model-file FILE.toml)")
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

    from helix_jax.files import input_file

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
        from helix_jax.errors import unknown_name

        raise ValueError(f"model file {path}: {unknown_name('key', unknown[0], allowed)}"
                         + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
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
