"""`helix forward --hf` against `transformers` itself: for each supported model_type, a small random
model written by `save_pretrained`, run through `helix forward --hf DIR --layout L --out f.npz`
on several layouts; its `output` must equal `transformers`' `last_hidden_state` for the same
tokens (relative error <= 1e-4, float32).

Needs torch and transformers, which helix_jax itself does not (the test suite checks the same
path against tests/reference_np.py on folders it writes without torch). Run it where they are
installed, with `helix` on the PATH:

    python -m venv --system-site-packages V && V/bin/pip install torch transformers
    python experiments/hf_check.py [--out results] [--helix helix]

Writes results/hf_check.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# A small model of each type: 8 query heads over 2 K/V heads (so a 4-way head split replicates
# K/V), head_dim 8, two layers; MoE types with 8 experts, top-2.
SHAPE = dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=2, head_dim=8,
             intermediate_size=128, vocab_size=128, num_hidden_layers=2, rms_norm_eps=1e-6,
             max_position_embeddings=256)
MODELS = {
    "llama": ("LlamaConfig", dict(SHAPE, rope_theta=500000.0)),
    "mistral": ("MistralConfig", dict(SHAPE, sliding_window=None)),
    "qwen2": ("Qwen2Config", dict(SHAPE, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", dict(SHAPE, rope_theta=1e6)),
    "mixtral": ("MixtralConfig", dict(SHAPE, intermediate_size=64, num_local_experts=8,
                                      num_experts_per_tok=2)),
    "qwen3_moe": ("Qwen3MoeConfig", dict(SHAPE, moe_intermediate_size=32, num_experts=8,
                                         num_experts_per_tok=2, norm_topk_prob=True)),
    "gpt2": ("GPT2Config", dict(n_embd=64, n_head=8, n_layer=2, n_positions=64, vocab_size=128)),
}
LAYOUTS = {"dense": ["single", "tp-pp:tp=8,pp=2", "helix", "helix:core=seq_a2a",
                     "kvp:kvp=4,tp=2", "dp:fsdp=true"],
           "moe": ["single", "ep:ep=4", "helix-ep:m=2,n=4", "tp-pp:tp=2,pp=2"]}
B, S, RTOL = 16, 32, 1e-4


def save_model(kind: str, folder: Path, seed: int) -> object:
    """A random `kind` model (base model, float32, eval mode) saved with save_pretrained."""
    import torch
    import transformers

    cls, kwargs = MODELS[kind]
    config = getattr(transformers, cls)(**kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModel.from_config(config).float().eval()
    with torch.no_grad():  # norms and biases off their 1/0 start, so a wrong path cannot hide
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder, safe_serialization=True)
    return model


def last_hidden_state(model, tokens: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(tokens, dtype=torch.long))
    return out.last_hidden_state.float().numpy()


def check(kind: str, layout: str, folder: Path, model, helix: str, work: Path) -> dict:
    out = work / f"{kind}-{layout.replace(':', '_').replace(',', '_')}.npz"
    start = time.perf_counter()
    r = subprocess.run([helix, "forward", "--hf", str(folder), "--layout", layout,
                        "--batch", str(B), "--seq", str(S), "--capacity-factor", "64",
                        "--repeat", "0", "--out", str(out)], capture_output=True, text=True)
    row = {"model_type": kind, "layout": layout, "seconds": round(time.perf_counter() - start, 1)}
    if r.returncode:
        return {**row, "ok": False, "error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    with np.load(out) as f:
        tokens, y = f["input"], f["output"]
    want = last_hidden_state(model, tokens)
    err = float(np.abs(y - want).max() / np.abs(want).max())
    return {**row, "ok": err <= RTOL, "relative_error": err}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "results"), help="folder for hf_check.{json,md}")
    ap.add_argument("--helix", default="helix", help="the helix command to run")
    args = ap.parse_args(argv)
    try:
        import torch
        import transformers
    except ImportError:
        print("hf_check: needs torch and transformers (pip install torch transformers)",
              file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for i, kind in enumerate(MODELS):
            folder = work / kind
            model = save_model(kind, folder, seed=i)
            moe = kind in ("mixtral", "qwen3_moe")
            for layout in LAYOUTS["moe" if moe else "dense"]:
                row = check(kind, layout, folder, model, args.helix, work)
                rows.append(row)
                print(json.dumps(row), flush=True)
    from helix_jax.report.provenance import generated_by, markdown_header

    gen = {**generated_by("python experiments/hf_check.py"), "torch": torch.__version__,
           "transformers": transformers.__version__}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hf_check.json").write_text(json.dumps({"generated_by": gen, "rows": rows}, indent=2))
    lines = ["# helix forward --hf against transformers' last_hidden_state\n",
             f"{markdown_header(gen)} With torch {torch.__version__}, transformers "
             f"{transformers.__version__}.\n",
             f"Each row: a random model written by `save_pretrained`, `helix forward --hf DIR "
             f"--layout L --batch {B} --seq {S}`, and the max-abs relative error of its `output` "
             f"against `transformers`' `last_hidden_state` for the same tokens (float32; pass at "
             f"<= {RTOL:g}).\n",
             "| model_type | layout | relative error | pass | seconds |", "|---|---|---|---|---|"]
    for r in rows:
        err = f"{r['relative_error']:.2e}" if "relative_error" in r else r.get("error", "")
        lines.append(f"| {r['model_type']} | `{r['layout']}` | {err} | "
                     f"{'yes' if r['ok'] else 'NO'} | {r['seconds']} |")
    (out / "hf_check.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'hf_check.md'}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
