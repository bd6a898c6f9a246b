"""Hugging Face safetensors -> this library's parameters, placed by a layout shard by shard.

Each parameter of the model has a recipe: the HF tensors it is made of (names and shapes, checked
before any data is read) and how to turn them into this library's form (torch `Linear` weights
[out, in] transposed; q/k head dimensions reordered so each rotary pair sits side by side, see
helix_jax/nn/attention.py; per-expert tensors stacked). Arrays are built with
`jax.make_array_from_callback`: each device's shard is read from the files (layer by layer for
stacked parameters), so a checkpoint larger than one device never sits whole on one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helix_jax.config import ModelConfig
from helix_jax.hf.config import read_config_json
from helix_jax.npz import flatten

PREFIXES = ("model.", "transformer.")  # a causal-LM checkpoint's base-model prefix


@dataclass(frozen=True)
class Recipe:
    """One parameter (of one layer, for stacked ones) from HF tensors: `sources` (name, shape)
    and `build`, which turns their float32 arrays into the parameter."""

    sources: tuple[tuple[str, tuple[int, ...]], ...]
    build: Callable[..., np.ndarray]


class Checkpoint:
    """The tensors of a checkpoint folder, by name without the causal-LM prefix, read lazily."""

    def __init__(self, folder: str | Path):
        from safetensors import safe_open

        self.folder = Path(folder).expanduser()
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            try:
                files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError) as e:
                raise ValueError(f"--hf {self.folder}: model.safetensors.index.json is not an "
                                 f"index of shards ({e})") from None
        elif (self.folder / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise ValueError(f"--hf {self.folder}: no model.safetensors (or "
                             f"model.safetensors.index.json) beside config.json; the weights "
                             f"are missing")
        self.where: dict[str, tuple[object, str]] = {}
        for name in files:
            path = self.folder / name
            if not path.is_file():
                raise ValueError(f"--hf {self.folder}: shard {name} named by the index is "
                                 f"missing")
            try:
                handle = safe_open(str(path), framework="np")
            except Exception as e:  # noqa: BLE001 (safetensors raises its own kinds)
                raise ValueError(f"--hf {self.folder}: {name} is not a readable safetensors "
                                 f"file ({str(e).splitlines()[0] if str(e) else e})") from None
            for key in handle.keys():
                short = next((key[len(p):] for p in PREFIXES if key.startswith(p)), key)
                self.where[short] = (handle, key)

    def shape(self, name: str) -> tuple[int, ...] | None:
        if name not in self.where:
            return None
        handle, key = self.where[name]
        return tuple(handle.get_slice(key).get_shape())

    def read(self, name: str) -> np.ndarray:
        handle, key = self.where[name]
        return np.asarray(handle.get_tensor(key), dtype=np.float32)


def _rotary_order(d: int) -> np.ndarray:
    """Head-dim order with rotary pair (i, i + d/2) side by side: [0, d/2, 1, d/2 + 1, ...]."""
    return np.stack([np.arange(d // 2), np.arange(d // 2) + d // 2], -1).reshape(-1)


def _layer_recipes(cfg: ModelConfig, kind: str, moe: bool) -> dict[str, Callable[[int], Recipe]]:
    """Per-layer recipes, by this library's name within a block (e.g. "attn.wq")."""
    D, H, G, d = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
    if kind == "gpt2":
        return _gpt2_layer(cfg)
    order = _rotary_order(d) if cfg.position == "rope" else np.arange(d)

    def linear(name, out_in, reshape=None, perm=False):  # torch Linear [out, in] -> [in, out]
        def make(i):
            def build(w):
                w = w.T if len(out_in) == 2 else w
                w = w.reshape(reshape) if reshape else w
                return w[..., order] if perm else w
            return Recipe(((f"layers.{i}.{name}", out_in),), build)
        return make

    r: dict[str, Callable[[int], Recipe]] = {
        "ln1.scale": linear("input_layernorm.weight", (D,)),
        "ln2.scale": linear("post_attention_layernorm.weight", (D,)),
        "attn.wq": linear("self_attn.q_proj.weight", (H * d, D), (D, H, d), True),
        "attn.wk": linear("self_attn.k_proj.weight", (G * d, D), (D, G, d), True),
        "attn.wv": linear("self_attn.v_proj.weight", (G * d, D), (D, G, d)),
        "attn.wo": linear("self_attn.o_proj.weight", (D, H * d), (H, d, D)),
        "attn.bq": linear("self_attn.q_proj.bias", (H * d,), (H, d), True),
        "attn.bk": linear("self_attn.k_proj.bias", (G * d,), (G, d), True),
        "attn.bv": linear("self_attn.v_proj.bias", (G * d,), (G, d)),
        "attn.bo": linear("self_attn.o_proj.bias", (D,)),
        "attn.q_norm.scale": linear("self_attn.q_norm.weight", (d,), None, True),
        "attn.k_norm.scale": linear("self_attn.k_norm.weight", (d,), None, True),
    }
    F = cfg.d_ff
    for ours, theirs, shape in (("w1", "gate_proj", (F, D)), ("w3", "up_proj", (F, D)),
                                ("w2", "down_proj", (D, F))):
        r[f"mlp.{ours}"] = linear(f"mlp.{theirs}.weight", shape)
        r[f"mlp.b{ours[1]}"] = linear(f"mlp.{theirs}.bias", (shape[0],))
    if moe:
        r.update(_moe_layer(cfg, kind))
    return r


def _moe_layer(cfg: ModelConfig, kind: str) -> dict[str, Callable[[int], Recipe]]:
    """Router and stacked experts: Mixtral's block_sparse_moe (w1 gate, w3 up, w2 down) or
    Qwen3-MoE's mlp.experts (gate_proj, up_proj, down_proj)."""
    D, E, F = cfg.d_model, cfg.n_experts, cfg.expert_d_ff
    base = "block_sparse_moe" if kind == "mixtral" else "mlp"
    names = ({"w1": "w1", "w3": "w3", "w2": "w2"} if kind == "mixtral"
             else {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"})

    def router(i):
        return Recipe(((f"layers.{i}.{base}.gate.weight", (E, D)),), lambda w: w.T)

    def experts(ours):
        shape = (D, F) if ours == "w2" else (F, D)

        def make(i):
            sources = tuple((f"layers.{i}.{base}.experts.{e}.{names[ours]}.weight", shape)
                            for e in range(E))
            return Recipe(sources, lambda *ws: np.stack([w.T for w in ws]))
        return make

    return {"moe.router": router, **{f"moe.{w}": experts(w) for w in ("w1", "w3", "w2")}}


def _gpt2_layer(cfg: ModelConfig) -> dict[str, Callable[[int], Recipe]]:
    """GPT-2's Conv1D weights are [in, out] already; c_attn holds q | k | v side by side."""
    D, H, d, F = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.d_ff

    def plain(name, shape, reshape=None):
        def make(i):
            return Recipe(((f"h.{i}.{name}", shape),),
                          lambda w: w.reshape(reshape) if reshape else w)
        return make

    def qkv(part, bias):
        def make(i):
            name = f"h.{i}.attn.c_attn.{'bias' if bias else 'weight'}"
            shape = (3 * D,) if bias else (D, 3 * D)
            cut = (slice(None),) * (0 if bias else 1) + (slice(part * D, (part + 1) * D),)
            target = (H, d) if bias else (D, H, d)
            return Recipe(((name, shape),), lambda w: w[cut].reshape(target))
        return make

    r = {"ln1.scale": plain("ln_1.weight", (D,)), "ln1.bias": plain("ln_1.bias", (D,)),
         "ln2.scale": plain("ln_2.weight", (D,)), "ln2.bias": plain("ln_2.bias", (D,)),
         "attn.wo": plain("attn.c_proj.weight", (D, D), (H, d, D)),
         "attn.bo": plain("attn.c_proj.bias", (D,)),
         "mlp.w1": plain("mlp.c_fc.weight", (D, F)), "mlp.b1": plain("mlp.c_fc.bias", (F,)),
         "mlp.w2": plain("mlp.c_proj.weight", (F, D)), "mlp.b2": plain("mlp.c_proj.bias", (D,))}
    for n, part in (("q", 0), ("k", 1), ("v", 2)):
        r[f"attn.w{n}"] = qkv(part, False)
        r[f"attn.b{n}"] = qkv(part, True)
    return r


def _top_recipes(cfg: ModelConfig, kind: str) -> dict[str, Recipe]:
    D, V = cfg.d_model, cfg.vocab

    def one(name, shape, build=lambda w: w):
        return Recipe(((name, shape),), build)

    if kind == "gpt2":
        r = {"embed.table": one("wte.weight", (V, D)),
             "positions.table": one("wpe.weight", (cfg.positions, D)),
             "final_ln.scale": one("ln_f.weight", (D,)), "final_ln.bias": one("ln_f.bias", (D,))}
    else:
        r = {"embed.table": one("embed_tokens.weight", (V, D)),
             "final_ln.scale": one("norm.weight", (D,))}
    r["head.w"] = one("lm_head.weight", (V, D), lambda w: w.T)
    return r


def recipes(cfg: ModelConfig, kind: str, names: list[str]) -> dict[str, list[Recipe]]:
    """For each of the model's flat parameter names ("layers.attn.wq", "embed.table", ...) its
    recipe, one per layer for the stacked ones (dense_layers first, then layers)."""
    top = _top_recipes(cfg, kind)
    out: dict[str, list[Recipe]] = {}
    dense = cfg.first_dense_layers
    for name in names:
        stack, _, rest = name.partition(".")
        if stack in ("layers", "dense_layers"):
            moe = stack == "layers" and cfg.is_moe
            layer_ids = range(dense) if stack == "dense_layers" else range(dense, cfg.n_layers)
            table = _layer_recipes(cfg, kind, moe)
            if rest not in table:
                raise ValueError(f"a {kind} checkpoint has no tensor for {name}")
            out[name] = [table[rest](i) for i in layer_ids]
        elif name in top:
            out[name] = [top[name]]
        else:
            raise ValueError(f"a {kind} checkpoint has no tensor for {name}")
    return out


# A base-model checkpoint (save_pretrained of LlamaModel, say) has no LM head: the parameter
# starts at zero, which leaves every output (the final hidden states) as it is.
OPTIONAL = ("head.w",)


def check_tensors(ckpt: Checkpoint, plan: dict[str, list[Recipe]]) -> None:
    """Every tensor the plan reads exists with the shape the config implies, before any data
    is read: one line naming the first missing or mis-shaped tensor and how many more. The
    optional ones that are missing are dropped from the plan (they start at zero)."""
    for name in OPTIONAL:
        if name in plan and any(ckpt.shape(n) is None for r in plan[name] for n, _ in r.sources):
            del plan[name]
    missing, wrong = [], []
    for rs in plan.values():
        for recipe in rs:
            for name, shape in recipe.sources:
                got = ckpt.shape(name)
                if got is None:
                    missing.append(name)
                elif got != shape:
                    wrong.append(f"{name} has shape {got} but config.json implies {shape}")
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"--hf {ckpt.folder}: weight {missing[0]} is missing{more}; the "
                         f"checkpoint does not match its config.json")
    if wrong:
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise ValueError(f"--hf {ckpt.folder}: {wrong[0]}{more}")


def _unflat(flat: dict[str, object]) -> dict:
    tree: dict = {}
    for name, v in flat.items():
        *path, last = name.split(".")
        node = tree
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return tree


def plan_for(folder: str | Path, cfg: ModelConfig, shapes: dict) -> tuple[Checkpoint, dict]:
    """Open the checkpoint and check it against the model's parameter `shapes` tree."""
    kind = read_config_json(folder)["model_type"]
    ckpt = Checkpoint(folder)
    plan = recipes(cfg, kind, list(flatten(shapes)))
    check_tensors(ckpt, plan)
    return ckpt, plan


def load_params(folder: str | Path, cfg: ModelConfig, shapes: dict, shardings: dict | None = None
                ) -> dict:
    """The checkpoint's parameters as this library's tree (float32). With `shardings` (the
    layout's NamedShardings) each is a jax array built shard by shard from the files; without,
    host NumPy arrays."""
    ckpt, plan = plan_for(folder, cfg, shapes)
    flat_shapes = flatten(shapes)
    flat_shardings = flatten(shardings) if shardings is not None else {}
    out = {}
    for name in set(flat_shapes) - set(plan):  # optional and absent: zeros
        shape = tuple(flat_shapes[name].shape)
        zeros = lambda index, shape=shape: np.broadcast_to(  # noqa: E731 (only the part)
            np.float32(0), shape)[index].copy()
        out[name] = (jax_array(shape, flat_shardings[name], zeros) if name in flat_shardings
                     else zeros(tuple(slice(None) for _ in shape)))
    for name, rs in plan.items():
        stacked = name.split(".")[0] in ("layers", "dense_layers")

        def get(i: int, rs=rs) -> np.ndarray:  # one layer of the parameter, read from the files
            recipe = rs[i]
            return recipe.build(*(ckpt.read(n) for n, _ in recipe.sources))

        def piece(index, get=get, stacked=stacked, n=len(rs)) -> np.ndarray:
            """One device's part: layer by layer, so the host holds one whole layer at most
            beside the part (a device's layers of a stacked parameter)."""
            if not stacked:
                return get(0)[index]
            return np.stack([get(i)[index[1:]] for i in range(n)[index[0]]])

        shape = tuple(flat_shapes[name].shape)
        if name in flat_shardings:
            out[name] = jax_array(shape, flat_shardings[name], piece)
        else:
            out[name] = piece(tuple(slice(None) for _ in shape))
    return _unflat(out)


def jax_array(shape: tuple[int, ...], sharding, piece: Callable) -> object:
    """A jax array built shard by shard: `piece(index)` gives each device's part."""
    import jax

    return jax.make_array_from_callback(shape, sharding, piece)
