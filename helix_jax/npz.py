"""The npz exchange format: parameters, input and output as named float32 arrays.

Keys: `input`, `output`, `config_json`, `layers.{i}.{ln1,attn,ln2,mlp|moe}.{name}`,
`final_ln.{scale,bias}`. Layers are stored one by one (the model stacks them), so a file written
here can be read by any other implementation and weights from elsewhere can be run on any layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from helix_jax.config import ModelConfig


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out.update(_flatten(value, name + ".") if isinstance(value, dict) else {name: value})
    return out


def params_to_flat(params: dict) -> dict[str, np.ndarray]:
    """{'layers': {'attn': {'wq': [L,...]}}, ...} -> {'layers.0.attn.wq': [...], ...} (float32)."""
    flat = {}
    for name, value in _flatten(params).items():
        value = np.asarray(value, dtype=np.float32)
        if name.startswith("layers."):
            rest = name[len("layers."):]
            for i, layer in enumerate(value):
                flat[f"layers.{i}.{rest}"] = layer
        else:
            flat[name] = value
    return flat


def flat_to_params(flat: dict[str, np.ndarray], shapes: dict, source: str = "params") -> dict:
    """Inverse of `params_to_flat`, checked against the model's parameter `shapes` tree."""
    missing, wrong = [], []

    def build(tree: dict, prefix: str) -> dict:
        out = {}
        for key, shape in tree.items():
            name = f"{prefix}{key}"
            if isinstance(shape, dict):
                out[key] = build(shape, name + ".")
                continue
            if name.startswith("layers."):
                rest = name[len("layers."):]
                names = [f"layers.{i}.{rest}" for i in range(shape.shape[0])]
            else:
                names = [name]
            arrays = []
            for n in names:
                if n not in flat:
                    missing.append(n)
                    continue
                arrays.append(np.asarray(flat[n], dtype=np.float32))
            if len(arrays) != len(names):
                continue
            value = np.stack(arrays) if name.startswith("layers.") else arrays[0]
            if value.shape != tuple(shape.shape):
                per_layer = slice(1 if len(names) > 1 else 0, None)  # one layer's shape
                wrong.append(f"{names[0]}: {value.shape[per_layer]} but the model needs "
                             f"{tuple(shape.shape)[per_layer]}")
            out[key] = value
        return out

    params = build(shapes, "")
    if missing or wrong:
        lines = [f"{source} does not fit the model:"]
        if missing:
            lines.append(f"  missing {len(missing)} arrays, e.g. {', '.join(missing[:4])}")
        lines += [f"  {w}" for w in wrong[:8]]
        raise ValueError("\n".join(lines))
    return params


def save(path: str | Path, cfg: ModelConfig, params: dict, x, y) -> None:
    """Write params, input and output (all float32) and the config as JSON."""
    arrays = params_to_flat(params)
    arrays["input"] = np.asarray(x, dtype=np.float32)
    arrays["output"] = np.asarray(y, dtype=np.float32)
    arrays["config_json"] = np.array(cfg.to_json())
    np.savez(path, **arrays)


def load(path: str | Path) -> tuple[dict[str, np.ndarray], ModelConfig | None]:
    """All arrays of an npz file, and its config if it carries one."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"no such file: {path}")
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    text = arrays.pop("config_json", None)
    return arrays, (ModelConfig.from_json(str(text)) if text is not None else None)
