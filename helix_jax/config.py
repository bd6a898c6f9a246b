"""Model configurations and presets (paper-*, small-*, tiny-*, and today's families: llama3-*,
mixtral-*, qwen3-30b-a3b, tiny-llama, tiny-mixtral).

A config is a frozen dataclass: the model's shape plus the run shape (batch, seq, dtype) that the
paper fixes alongside it. `resolve_model` turns a preset name and CLI overrides into a checked config.
The blocks it can describe: multi-head, grouped-query (`n_kv_heads`) or multi-query attention with
no, learned or rotary positions and optional q/k RMSNorm; a GELU, SwiGLU or squared-ReLU FFN;
LayerNorm or RMSNorm; dense or top-k mixture-of-experts FFNs with shared experts and leading dense
layers.
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
    "n_layers": (1, 4096), "n_heads": (1, 4096), "n_kv_heads": (0, 4096), "head_dim": (1, 4096),
    "d_model": (1, 2**20), "d_ff": (1, 2**22), "vocab": (0, 2**22), "n_experts": (0, 4096),
    "top_k": (1, 4096), "moe_d_ff": (0, 2**22), "n_shared_experts": (0, 4096),
    "first_dense_layers": (0, 4096), "max_positions": (0, 2**24), "sliding_window": (0, 2**24),
    "batch": (1, 2**20),
    "seq": (1, 2**24), "q_block": (0, 2**24), "kv_block": (0, 2**24),
}
# The choices of each kind of block (the first is the GPT-2 block's).
FFNS = ("gelu", "swiglu", "squared_relu")
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("none", "learned", "rope")


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
    # [vocab, D] in front and an LM head [D, vocab] with softmax cross-entropy at the end.
    vocab: int = 0
    # K/V heads: 0 means as many as query heads (multi-head); fewer is grouped-query attention
    # (query head h uses K/V head h // (n_heads / n_kv_heads)); 1 is multi-query.
    n_kv_heads: int = 0
    ffn: str = "gelu"  # gelu: W2 gelu(W1 x); swiglu: W2 (silu(W1 x) * W3 x); squared_relu
    norm: str = "layernorm"  # or rmsnorm (scale only)
    position: str = "none"  # none | learned (a [max_positions, D] table) | rope
    rope_theta: float = 10000.0
    max_positions: int = 0  # rows of the learned position table; 0: seq
    qk_norm: bool = False  # RMSNorm over the head dim of q and k (Qwen3, OLMo 2)
    attn_bias: bool = False  # biases on the q, k and v projections
    attn_out_bias: bool = False  # a bias on the attention output projection
    mlp_bias: bool = True  # biases in the FFN (and the experts)
    tie_embeddings: bool = False  # the LM head is the token embedding, transposed
    n_experts: int = 0
    top_k: int = 1
    # Router: softmax over all experts, then the top k; their weights renormalised to sum to 1
    # when True, left as probabilities when False, None: renormalised when top_k > 1.
    normalize_top_k: bool | None = None
    capacity_factor: float = 1.25
    moe_d_ff: int = 0  # the width of each expert (0: d_ff)
    n_shared_experts: int = 0  # always-on experts of width moe_d_ff beside the routed ones
    first_dense_layers: int = 0  # leading layers with a dense FFN of width d_ff
    # Sliding-window attention (Mistral): 0 none. Not implemented: a window shorter than the
    # sequence is refused, so a model that has one runs only where it changes nothing.
    sliding_window: int = 0
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
        self._check_blocks()
        if not (math.isfinite(self.capacity_factor) and 0 < self.capacity_factor <= 1024):
            raise ValueError(f"{self.name}: capacity_factor must be a number in (0, 1024], got "
                             f"{_short(self.capacity_factor)}")
        if not (math.isfinite(self.ln_eps) and 0 < self.ln_eps <= 1):
            raise ValueError(f"{self.name}: ln_eps must be a number in (0, 1], got "
                             f"{_short(self.ln_eps)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"{self.name}: dtype {_short(self.dtype)} is not one of "
                             f"{', '.join(DTYPES)}")

    def _check_blocks(self) -> None:
        """The block choices and how they fit together; each error names the key and the fix."""
        for key, allowed in (("ffn", FFNS), ("norm", NORMS), ("position", POSITIONS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{self.name}: {key} = {_short(getattr(self, key))} is not one of "
                                 f"{', '.join(allowed)}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"{self.name}: n_heads={self.n_heads} is not a multiple of "
                             f"n_kv_heads={self.n_kv_heads}; each K/V head serves a whole group "
                             f"of query heads, so choose n_kv_heads dividing {self.n_heads}")
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(f"{self.name}: rotary positions rotate pairs of head dimensions, but "
                             f"head_dim={self.head_dim} is odd; use an even head_dim")
        if not (math.isfinite(self.rope_theta) and self.rope_theta > 1):
            raise ValueError(f"{self.name}: rope_theta must be a number > 1, got "
                             f"{_short(self.rope_theta)}")
        if self.position == "learned" and self.positions < self.seq:
            raise ValueError(f"{self.name}: the learned position table has max_positions="
                             f"{self.max_positions} rows but seq={self.seq}; use a seq of at most "
                             f"{self.max_positions}")
        if self.sliding_window and self.sliding_window < self.seq:
            raise ValueError(f"{self.name}: sliding-window attention (window {self.sliding_window}"
                             f") shorter than seq={self.seq} is not implemented; use a seq of at "
                             f"most {self.sliding_window}")
        if self.tie_embeddings and not self.vocab:
            raise ValueError(f"{self.name}: tie_embeddings needs a vocabulary (vocab > 0)")
        moe_keys = {"moe_d_ff": self.moe_d_ff, "n_shared_experts": self.n_shared_experts,
                    "first_dense_layers": self.first_dense_layers}
        if not self.is_moe and any(moe_keys.values()):
            key = next(k for k, v in moe_keys.items() if v)
            raise ValueError(f"{self.name}: {key} applies to mixture-of-experts models, but "
                             f"n_experts = 0; set n_experts or drop {key}")
        if self.is_moe and self.first_dense_layers >= self.n_layers:
            raise ValueError(f"{self.name}: first_dense_layers={self.first_dense_layers} leaves "
                             f"no MoE layer of n_layers={self.n_layers}; use fewer")

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def kv_heads(self) -> int:
        """The number of K/V heads (n_kv_heads, or n_heads when that is 0)."""
        return self.n_kv_heads or self.n_heads

    @property
    def expert_d_ff(self) -> int:
        """The hidden width of one routed (or shared) expert."""
        return self.moe_d_ff or self.d_ff

    @property
    def shared_d_ff(self) -> int:
        """The hidden width of the shared experts, run as one dense FFN (0: none)."""
        return self.n_shared_experts * self.expert_d_ff

    @property
    def moe_layers(self) -> int:
        """How many layers have a mixture-of-experts FFN."""
        return self.n_layers - self.first_dense_layers if self.is_moe else 0

    @property
    def positions(self) -> int:
        """Rows of the learned position table."""
        return self.max_positions or self.seq

    @property
    def renormalize(self) -> bool:
        """Whether the router's top-k weights are renormalised to sum to 1."""
        return self.top_k > 1 if self.normalize_top_k is None else self.normalize_top_k

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

# Today's families, with the shapes their Hugging Face configs publish: the Llama block
# (grouped-query attention, rotary positions, RMSNorm, SwiGLU, no biases, untied head) and its
# mixture-of-experts relatives. The run shape is a training sequence of their context.
_LLAMA = dict(norm="rmsnorm", ffn="swiglu", position="rope", mlp_bias=False, head_dim=128,
              batch=8, seq=8192, dtype="bfloat16", q_block=1024, kv_block=1024)
_TINY_LLAMA = dict(norm="rmsnorm", ffn="swiglu", position="rope", mlp_bias=False, n_layers=2,
                   d_model=64, n_heads=8, n_kv_heads=2, head_dim=8, vocab=128, batch=16, seq=32)

PRESETS: dict[str, ModelConfig] = {
    c.name: c
    for c in (
        ModelConfig("paper-dense", n_layers=2, **_PAPER),
        ModelConfig("paper-moe", n_layers=4, n_experts=16, **_PAPER),
        ModelConfig("small-dense", n_layers=2, **_SMALL),
        ModelConfig("small-moe", n_layers=4, n_experts=16, **_SMALL),
        ModelConfig("tiny-dense", n_layers=2, d_ff=512, **_TINY),
        ModelConfig("tiny-moe", n_layers=4, n_experts=16, d_ff=256, **_TINY),
        ModelConfig("llama3-8b", n_layers=32, d_model=4096, n_heads=32, n_kv_heads=8,
                    d_ff=14336, vocab=128256, rope_theta=500000.0, **_LLAMA),
        ModelConfig("llama3-70b", n_layers=80, d_model=8192, n_heads=64, n_kv_heads=8,
                    d_ff=28672, vocab=128256, rope_theta=500000.0, **_LLAMA),
        ModelConfig("llama3.1-405b", n_layers=126, d_model=16384, n_heads=128, n_kv_heads=8,
                    d_ff=53248, vocab=128256, rope_theta=500000.0, **_LLAMA),
        ModelConfig("mixtral-8x7b", n_layers=32, d_model=4096, n_heads=32, n_kv_heads=8,
                    d_ff=14336, vocab=32000, n_experts=8, top_k=2, rope_theta=1e6, **_LLAMA),
        ModelConfig("mixtral-8x22b", n_layers=56, d_model=6144, n_heads=48, n_kv_heads=8,
                    d_ff=16384, vocab=32768, n_experts=8, top_k=2, rope_theta=1e6, **_LLAMA),
        ModelConfig("qwen3-30b-a3b", n_layers=48, d_model=2048, n_heads=32, n_kv_heads=4,
                    d_ff=6144, moe_d_ff=768, vocab=151936, n_experts=128, top_k=8,
                    normalize_top_k=True, qk_norm=True, rope_theta=1e6, ln_eps=1e-6, **_LLAMA),
        ModelConfig("tiny-llama", d_ff=128, **_TINY_LLAMA),
        ModelConfig("tiny-mixtral", d_ff=64, n_experts=8, top_k=2, **_TINY_LLAMA),
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
MODEL_FILE_OPTIONAL = {
    "n_kv_heads": int, "ffn": str, "norm": str, "position": str, "rope_theta": float,
    "max_positions": int, "qk_norm": bool, "attn_bias": bool, "attn_out_bias": bool,
    "mlp_bias": bool, "tie_embeddings": bool, "n_experts": int, "top_k": int,
    "normalize_top_k": bool, "capacity_factor": float, "moe_d_ff": int, "n_shared_experts": int,
    "first_dense_layers": int, "causal": bool, "ln_eps": float}
# Keys a model file writes only for a mixture-of-experts model.
_MOE_FILE_KEYS = ("n_experts", "top_k", "normalize_top_k", "capacity_factor", "moe_d_ff",
                  "n_shared_experts", "first_dense_layers")
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
                                    if cfg.is_moe or k not in _MOE_FILE_KEYS]
    return "".join(f"{k} = {toml(getattr(cfg, k))}\n" for k in keys
                   if getattr(cfg, k) is not None)
