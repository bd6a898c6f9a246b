#!/usr/bin/env bash
# What ran on the lent H200 machine (jax 0.11.2, the package from the checkout) on 2026-12-04, as
# one call of the device tool: a traced llama3-8b decode step at batch 1 and 8
# (experiments/gpu_decode_trace.py -> results/gpu_decode_trace*.{json,md}). OUT is the results
# folder (default results).
set -o pipefail; export PYTHONUNBUFFERED=1
OUT=${OUT:-results}
mkdir -p "$OUT/b1" "$OUT/b8"
timeout 200 python3 experiments/gpu_decode_trace.py --out "$OUT/b1" --batch 1 2>&1 | grep -v "^E1204\|slow_operation"
timeout 200 python3 experiments/gpu_decode_trace.py --out "$OUT/b8" --batch 8 2>&1 | grep -v "^E1204\|slow_operation"
