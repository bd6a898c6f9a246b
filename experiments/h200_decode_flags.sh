#!/usr/bin/env bash
# What ran on the lent H200 machine on 2026-12-04 after experiments/h200_decode_trace.sh: the same
# traced llama3-8b batch-1 decode step under two XLA:GPU options that might remove the per-layer
# copies of the stacked weights that the trace showed (an experiment on XLA's flags, not a project
# setting). Output: results/gpu_decode_flags.log.
set -o pipefail; export PYTHONUNBUFFERED=1
OUT=${OUT:-results}
for flag in --xla_gpu_enable_dynamic_slice_fusion=true \
            --xla_gpu_enable_while_loop_unrolling=WHILE_LOOP_UNROLLING_FULL_UNROLL; do
  echo "== XLA_FLAGS=$flag"
  mkdir -p "$OUT/f"
  XLA_FLAGS=$flag timeout 110 python3 experiments/gpu_decode_trace.py --out "$OUT/f" --batch 1 \
      --steps 4 2>&1 | grep -E "Median wall|MemcpyD2D|gemm_fusion_dot" | head -5
done
