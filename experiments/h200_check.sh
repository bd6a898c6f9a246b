#!/usr/bin/env bash
# What ran on the lent H200 machine (jax 0.11.2, Python 3.12; nothing installed there, so the
# package runs from the checkout), on 2026-12-04, as two calls of the device tool. Output:
# results/h200_check.log. Run from the repository root on a machine with a GPU.
#
# Call 1 (commit a0c8007): does this jax run the project, and one
# decode measurement of a Llama-3-8B-shaped model on one GPU (float32 master weights, as
# `helix decode` runs today; per token: the median of 128 teacher-forced steps, each synced).
set -o pipefail; export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv
python3 -c "import jax,flax,optax,orbax.checkpoint,chex,rich,tqdm,safetensors; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
echo "== CPU: helix project with the fast-codegen XLA flags on this jax"
JAX_PLATFORMS=cpu timeout 150 python3 -m helix_jax.cli project --model tiny-llama --layout tp-pp:tp=2,pp=1 --mode decode | tail -5
echo "== GPU: forward tiny-llama"
timeout 120 python3 -m helix_jax.cli forward --model tiny-llama --layout single --repeat 3 | tail -4
for b in 1 8; do
  echo "== GPU: decode llama3-8b batch $b"
  timeout 240 python3 -m helix_jax.cli decode --model llama3-8b --layout single --batch $b \
      --seq 2048 --prompt-len 1920 --dtype bfloat16 | tail -8
done
# Call 2 (commit 09f74b9, after the flag fix): the projection on jax 0.11's CPU, and the suite there.
JAX_PLATFORMS=cpu timeout 120 python3 -m helix_jax.cli project --model tiny-llama --layout tp-pp:tp=2,pp=1 --mode decode | tail -3
JAX_PLATFORMS=cpu timeout 420 python3 -m pytest -q -n 14 -p no:cacheprovider --ignore=tests/test_notebooks.py tests 2>&1 | tail -40
