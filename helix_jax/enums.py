"""The named choices the library offers, each in one place: the CLI's strings are the enum values
(a `StrEnum` compares equal to its string), so `--mode train`, `Mode.TRAIN` and `"train"` are the
same thing, and a list of choices is `tuple(Enum)`, never retyped."""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    """What program a projection or measurement compiles."""

    FORWARD = "forward"
    TRAIN = "train"
    PREFILL = "prefill"
    DECODE = "decode"


class Remat(StrEnum):
    """Activation recompute in the backward: none, the attention core, or every layer."""

    NONE = "none"
    SELECTIVE = "selective"
    FULL = "full"


class AttentionPricing(StrEnum):
    """How a projection prices the attention core: one fused flash kernel (scores stay on chip),
    or the unfused kernels of runs before flash attention (scores written to HBM)."""

    FLASH = "flash"
    UNFUSED = "unfused"


class Partitioner(StrEnum):
    """Who places the collectives: the hand-written shard_map layouts, or XLA (GSPMD)."""

    SHARD_MAP = "shard_map"
    GSPMD = "gspmd"


class Weights(StrEnum):
    """How a prefill, decode or forward program takes its weights: copies in the model's dtype,
    or FP8 (float8_e4m3fn matmul weights with per-output-channel scales, each matmul W8A8,
    nn/float8.py). Serving only: training keeps float32 masters."""

    MODEL = "model"
    FLOAT8 = "float8"


class Core(StrEnum):
    """How attention runs when the head dimension is split (helix m > 1)."""

    SCORE_PSUM = "score_psum"
    SEQ_A2A = "seq_a2a"
    QK_GATHER = "qk_gather"


class AttentionKernel(StrEnum):
    """How a device runs its ordinary attention: one library call (`jax.nn.dot_product_attention`,
    cuDNN on a GPU), the blockwise online-softmax scan (what the cost model compiles), or auto:
    whichever is faster on the backend (nn/fused_attention.py)."""

    AUTO = "auto"
    FUSED = "fused"
    BLOCKWISE = "blockwise"


class ContextAttention(StrEnum):
    """How attention reaches the other context-parallel shards' keys and values."""

    RING = "ring"
    ALLGATHER = "allgather"


class Schedule(StrEnum):
    """Pipeline schedules; 1f1b with virtual=V > 1 is interleaved."""

    GPIPE = "gpipe"
    ONE_F_ONE_B = "1f1b"


class Placement(StrEnum):
    """Where a tp-pp layout puts a tensor-parallel group's stages: tensor ranks share a node
    (tensor-inner, Megatron's default), or the stages of one tensor rank do (stage-inner)."""

    TENSOR_INNER = "tensor-inner"
    STAGE_INNER = "stage-inner"


class RowStatus(StrEnum):
    """Where a planner candidate stands."""

    PENDING = "pending"
    PROJECTING = "projecting"
    RANKED = "ranked"
    DOES_NOT_FIT = "does not fit"
    ERROR = "error"
    PRUNED_MEMORY = "pruned: memory"
    PRUNED_TIME = "pruned: time"
    SKIPPED_RECOMPUTE = "skipped: recompute"


def choices(enum: type[StrEnum]) -> tuple[str, ...]:
    """The enum's values as plain strings, in order (for argparse and messages)."""
    return tuple(e.value for e in enum)
