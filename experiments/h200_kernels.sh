#!/usr/bin/env bash
# What ran on the lent H200 machine (jax 0.11.2, Python 3.12, the package from the checkout) on
# 2026-12-04, as one call of the device tool: the attention kernels and the HBM/matmul ceilings
# (experiments/gpu_kernels.py -> results/gpu_kernels.{json,md}), then the Llama-3-8B-shaped
# decode of experiments/h200_check.sh again, now with bf16 serving weights and --generate's
# on-device loop. Output: results/h200_kernels.log. Run from the repository root on a GPU machine;
# OUT is the folder the results go to (default results).
set -o pipefail; export PYTHONUNBUFFERED=1
OUT=${OUT:-results}
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
echo "== attention kernels and ceilings"
timeout 200 python3 experiments/gpu_kernels.py --out "$OUT" | grep -v '^|' | head -20
for b in 1 8; do
  echo "== decode llama3-8b batch $b (bf16 serving weights; --generate 64 on the device)"
  timeout 150 python3 -m helix_jax.cli decode --model llama3-8b --layout single --batch $b \
      --seq 2048 --prompt-len 1920 --dtype bfloat16 --generate 64 | tail -6
done
echo "== train tiny-llama in bf16 on single (the library call's backward inside the layer scan)"
timeout 60 python3 -m helix_jax.cli train --model tiny-llama --layout single --dtype bfloat16 --steps 3 | tail -3
