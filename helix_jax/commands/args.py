"""Options several `helix` commands share: the model and its run shape, the layout, the
partitioner, and the config and layout they name. No jax here."""

from __future__ import annotations

import argparse

from helix_jax.config import DTYPES, ModelConfig, resolve_model
from helix_jax.enums import Mode, Partitioner, Weights, choices
from helix_jax.layouts import Layout, parse_layout

BOTH = "both"  # `--partitioner both`: compile both partitioners and compare them


def model_args(p: argparse.ArgumentParser, default_model: str, layout: bool = True,
               weights: bool = True) -> None:
    """The model, its run shape, (unless `layout` is false) the layout and (unless `weights` is
    false) the weight format: what every command that builds a model takes."""
    p.add_argument("--model", default=default_model,
                   help=f"model preset (default: {default_model}; `helix models` lists them)")
    p.add_argument("--model-file", metavar="FILE.toml",
                   help="a model from a TOML file (keys: name, n_layers, d_model, n_heads, "
                   "head_dim, d_ff, vocab; optional: the README lists them); overrides --model")
    p.add_argument("--hf", metavar="DIR", help="a Hugging Face checkpoint folder (config.json "
                   "+ model.safetensors, as save_pretrained writes them; model_type llama, "
                   "mistral, qwen2, qwen3, mixtral, qwen3_moe or gpt2): its model, and its "
                   "weights where the command runs the model; overrides --model")
    if layout:
        layout_arg(p)
    p.add_argument("--batch", type=int, help="batch size (default: the preset's)")
    p.add_argument("--seq", type=int, help="sequence length (default: the preset's)")
    p.add_argument("--dtype", choices=DTYPES, help="compute dtype (default: the preset's)")
    p.add_argument("--causal", action=argparse.BooleanOptionalAction, default=None,
                   help="causal attention mask (default: on)")
    p.add_argument("--q-block", type=int, help="query block of the blockwise attention (0: whole)")
    p.add_argument("--kv-block", type=int, help="key/value block of the blockwise attention")
    p.add_argument("--top-k", type=int, help="MoE: experts per token (default 1)")
    p.add_argument("--capacity-factor", type=float, help="MoE: expert capacity factor (default 1.25)")
    p.add_argument("--normalize-top-k", action="store_true", default=None,
                   help="MoE: renormalise the chosen experts' probabilities")
    if weights:
        p.add_argument("--weights", default=Weights.MODEL.value, choices=choices(Weights),
                       help="the weights a forward, prefill or decode reads: model (copies in "
                       "the model's dtype, default) or float8 (FP8: float8_e4m3fn matmul weights "
                       "with per-output-channel scales, each matmul W8A8 with its activation "
                       "rounded to float8); serving only: forward, decode, project --mode prefill|decode")


def layout_arg(p: argparse.ArgumentParser) -> None:
    """`--layout SPEC` (default helix)."""
    p.add_argument("--layout", default="helix", help="layout spec, e.g. helix:m=4,n=4,core=seq_a2a "
                   "(default: helix; `helix layouts` lists them)")


def partitioner_arg(p: argparse.ArgumentParser, both: bool = False) -> None:
    """`--partitioner shard_map|gspmd` (and `both` where the command can compare them)."""
    p.add_argument("--partitioner", default=Partitioner.SHARD_MAP.value,
                   choices=choices(Partitioner) + ((BOTH,) if both else ()),
                   help="shard_map: the hand-written collectives (default); gspmd: the same model "
                   "under jax.jit with the layout's shardings, XLA choosing the collectives"
                   + ("; both: compile both and compare them side by side" if both else ""))


def mode_arg(p: argparse.ArgumentParser, text: str) -> None:
    """`--mode forward|train|prefill|decode` (default forward), `text` its help."""
    p.add_argument("--mode", default=Mode.FORWARD.value, choices=choices(Mode), help=text)


def config(args: argparse.Namespace) -> ModelConfig:
    """The model the options name: a preset, `--model-file` or `--hf`, with the run shape
    overridden."""
    if getattr(args, "hf", None):
        from helix_jax.hf.config import config_from_hf

        if args.model_file:
            raise ValueError("--hf and --model-file both name the model; give one")
        return config_from_hf(args.hf, batch=args.batch, seq=args.seq, dtype=args.dtype,
                              causal=args.causal, q_block=args.q_block, kv_block=args.kv_block,
                              top_k=args.top_k, capacity_factor=args.capacity_factor,
                              normalize_top_k=args.normalize_top_k)
    if args.model_file:
        from helix_jax.config import load_model_file

        base = load_model_file(args.model_file)
        return base.replace(batch=args.batch, seq=args.seq, dtype=args.dtype, causal=args.causal,
                            q_block=args.q_block, kv_block=args.kv_block, top_k=args.top_k,
                            capacity_factor=args.capacity_factor,
                            normalize_top_k=args.normalize_top_k)
    return resolve_model(args.model, batch=args.batch, seq=args.seq, dtype=args.dtype,
                         causal=args.causal, q_block=args.q_block, kv_block=args.kv_block,
                         top_k=args.top_k, capacity_factor=args.capacity_factor,
                         normalize_top_k=args.normalize_top_k)


def hf_weights_checked(args: argparse.Namespace, cfg: ModelConfig) -> None:
    """With `--hf`, check that the folder's weights are all there with the shapes `cfg` needs
    (reading only the safetensors headers), before any work."""
    if getattr(args, "hf", None):
        from helix_jax.errors import warn
        from helix_jax.hf.weights import OPTIONAL, plan_for
        from helix_jax.model import param_shapes

        _, plan = plan_for(args.hf, cfg, param_shapes(cfg))
        if cfg.vocab and not cfg.tie_embeddings and "head.w" in set(OPTIONAL) - set(plan):
            warn(f"--hf {args.hf} has no lm_head (a base model): the LM head starts at zero; "
                 f"the outputs (final hidden states) do not use it, training learns it")


def model_and_layout(args: argparse.Namespace,
                     validate: bool = True) -> tuple[ModelConfig, Layout]:
    """The config and layout the arguments name, checked against each other (unless the caller
    checks them itself: a projection lets a composed pipeline's layers fall unevenly)."""
    serving_weights(args)
    cfg, layout = config(args), parse_layout(args.layout)
    if validate:
        layout.validate(cfg)
    return cfg, layout


def serving_weights(args: argparse.Namespace) -> str:
    """The weight format `--weights` names. Training shares the model options but keeps float32
    master weights: float8 there is refused before any work."""
    weights = getattr(args, "weights", Weights.MODEL)
    if weights == Weights.FLOAT8 and getattr(args, "command", None) == "train":
        raise ValueError("--weights float8 is FP8 for serving (helix forward, decode, "
                         "project --mode prefill|decode); helix train keeps float32 master "
                         "weights: drop --weights")
    return weights


def context_as_seq(args: argparse.Namespace) -> None:
    """`--context` (prefill/decode only; its range is checked with the others) as the length the
    model is built for."""
    if args.context is not None:
        if args.mode not in (Mode.PREFILL, Mode.DECODE):
            raise ValueError("--context applies to --mode prefill or decode")
        args.seq = args.context
