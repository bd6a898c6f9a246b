"""The npz exchange format: parameters, input and output as named float32 arrays.

Keys: `input` (embeddings, or int32 tokens for a model with a vocabulary), `output` (the final
hidden states, after the final norm), `config_json`, `layers.{i}.{ln1,attn,ln2,mlp|moe}.{name}`,
`final_ln.{scale[,bias]}`, and with a vocabulary `embed.table` (`head.w` unless tied,
`positions.table` with learned positions). Layers are stored one by one, numbered from 0 in
model order (the model stacks them: a MoE model's leading dense layers in a stack of their own),
so a file written here can be read by any other implementation and weights from elsewhere can be
run on any layout. With rotary positions the q/k head dimensions are stored pair by pair (see
helix_jax/nn/attention.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from helix_jax.config import ModelConfig


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """A nested dict as {"a.b.c": leaf}."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out.update(flatten(value, name + ".") if isinstance(value, dict) else {name: value})
    return out


STACKS = ("dense_layers", "layers")  # stacked layers, in model order


def _first_layers(tree: dict) -> dict[str, int]:
    """The model-order number of each stack's first layer."""
    first, n = {}, 0
    for stack in STACKS:
        first[stack] = n
        if stack in tree:
            n += next(iter(flatten(tree[stack]).values())).shape[0]
    return first


def params_to_flat(params: dict) -> dict[str, np.ndarray]:
    """{'layers': {'attn': {'wq': [L,...]}}, ...} -> {'layers.0.attn.wq': [...], ...} (float32)."""
    flat = {}
    first = _first_layers(params)
    for name, value in flatten(params).items():
        value = np.asarray(value, dtype=np.float32)
        stack, _, rest = name.partition(".")
        if stack in STACKS:
            for i, layer in enumerate(value):
                flat[f"layers.{first[stack] + i}.{rest}"] = layer
        else:
            flat[name] = value
    return flat


def _check_values(name: str, value: np.ndarray, source: str) -> None:
    """A parameter array must hold real numbers, all finite."""
    if value.dtype.kind not in "fiu":
        raise ValueError(f"{source}: array {name} has dtype {value.dtype}, expected float32 "
                         f"numbers")
    bad = int(value.size - np.count_nonzero(np.isfinite(value)))
    if bad:
        raise ValueError(f"{source}: array {name} has {bad} non-finite value(s) (NaN or inf) of "
                         f"{value.size}; fix or regenerate the file")


def flat_to_params(flat: dict[str, np.ndarray], shapes: dict, source: str = "params") -> dict:
    """Inverse of `params_to_flat`, checked against the model's parameter `shapes` tree: every
    array present, real and finite, and of the shape the model needs (named when not)."""
    missing, wrong = [], []
    first = _first_layers(shapes)

    def build(tree: dict, prefix: str) -> dict:
        out = {}
        for key, shape in tree.items():
            name = f"{prefix}{key}"
            if isinstance(shape, dict):
                out[key] = build(shape, name + ".")
                continue
            stack, _, rest = name.partition(".")
            stacked = stack in STACKS
            want = tuple(shape.shape)[1:] if stacked else tuple(shape.shape)
            names = ([f"layers.{first[stack] + i}.{rest}" for i in range(shape.shape[0])]
                     if stacked else [name])
            arrays = []
            for n in names:
                if n not in flat:
                    missing.append(n)
                    continue
                value = np.asarray(flat[n])
                _check_values(n, value, source)
                if value.shape != want:
                    wrong.append(f"{n} has shape {value.shape} but the model needs {want}")
                    continue
                arrays.append(value.astype(np.float32))
            if len(arrays) == len(names):
                out[key] = np.stack(arrays) if stacked else arrays[0]
        return out

    params = build(shapes, "")
    if missing or wrong:
        problems = ([f"missing {len(missing)} array(s), e.g. {', '.join(missing[:4])}"]
                    if missing else []) + wrong[:4]
        more = f" (and {len(wrong) - 4} more)" if len(wrong) > 4 else ""
        raise ValueError(f"{source} does not fit the model: {'; '.join(problems)}{more}")
    return params


def save(path: str | Path, cfg: ModelConfig, params: dict, x, y) -> None:
    """Write params, input and output (all float32) and the config as JSON to exactly `path`,
    through a temporary file: an existing file is replaced whole or not at all."""
    from helix_jax.files import atomic_output

    arrays = params_to_flat(params)
    x = np.asarray(x)
    arrays["input"] = x.astype(np.int32 if x.dtype.kind in "iu" else np.float32)  # tokens stay ints
    arrays["output"] = np.asarray(y, dtype=np.float32)
    arrays["config_json"] = np.array(cfg.to_json())
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load(path: str | Path, flag: str = "--params") -> tuple[dict[str, np.ndarray],
                                                          ModelConfig | None]:
    """All arrays of an npz file, and its config if it carries one. A missing, unreadable,
    garbage or truncated file, or a config that is not one: a ValueError naming the file. (The
    parameters' values are checked where they are read as parameters: `flat_to_params`.)"""
    from helix_jax.files import input_file

    path = input_file(path, flag, "an npz file")
    source = f"{flag} {path}"
    try:
        with np.load(path, allow_pickle=False) as f:
            if not isinstance(f, np.lib.npyio.NpzFile):
                raise ValueError("it holds a single .npy array")
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # numpy, zipfile and zlib each raise their own kinds
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "pickled" in reason or "magic" in reason.lower():
            reason = "neither a zip archive of arrays nor one without pickled objects"
        raise ValueError(f"{source} is not a readable npz archive ({reason}); write one with "
                         f"`helix forward --out FILE`") from None
    text = arrays.pop("config_json", None)
    if text is None:
        return arrays, None
    try:
        return arrays, ModelConfig.from_json(str(text))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: its config_json is not a model config ({e})") from None
