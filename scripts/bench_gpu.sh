#!/usr/bin/env bash
# One-GPU benchmark: every trainer's step and PGD-100 throughput against the image-encoder
# floor, at ViT-B/32 and ViT-B/16 shapes (random weights, nothing downloaded), fp32 and bf16.
# Writes OUT/<arch>_<precision>.json and one markdown table, OUT/benchmarks.md.
#
#   bash scripts/bench_gpu.sh                                  # cuda, 1000 classes, batch 32
#   bash scripts/bench_gpu.sh --device cpu --archs tiny --classes 5 --batch 2 --repeats 1 --eval-steps 2
set -euo pipefail

DEVICE=cuda ARCHS="vit-b32 vit-b16" PRECISIONS="fp32 bf16" CLASSES=1000 BATCH=32 REPEATS=5 EVAL_STEPS=100 K=4
OUT=output/bench_gpu
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) DEVICE=$2 ;;
    --archs) ARCHS=$2 ;;
    --precisions) PRECISIONS=$2 ;;
    --classes) CLASSES=$2 ;;
    --batch) BATCH=$2 ;;
    --repeats) REPEATS=$2 ;;
    --eval-steps) EVAL_STEPS=$2 ;;
    --k) K=$2 ;;
    --out) OUT=$2 ;;
    *) echo "error: unknown option $1 (valid: --device --archs --precisions --classes --batch --repeats --eval-steps --k --out)" >&2; exit 2 ;;
  esac
  shift 2
done

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
TABLE="$OUT/benchmarks.md"
: > "$TABLE"
for arch in $ARCHS; do
  for precision in $PRECISIONS; do
    echo "== $arch $precision on $DEVICE"
    "$PYTHON" scripts/bench_step_time.py --arch "$arch" --precision "$precision" --device "$DEVICE" \
      --classes "$CLASSES" --batch "$BATCH" --k "$K" --repeats "$REPEATS" --warmup 1 --eval-steps "$EVAL_STEPS" \
      --json "$OUT/${arch}_${precision}.json" --markdown "$TABLE"
  done
done
echo "table: $TABLE"
cat "$TABLE"
