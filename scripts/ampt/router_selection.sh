#!/usr/bin/env bash
# AMPT router study, stage 1: choose the router setting on the VALIDATION split of the Digits demo.
# Every setting x seed trains AMPT (K=4 x 4 tokens, configs/trainers/AMPT/digits.yaml) and ends with
# clean and PGD-10 accuracy on the 80 validation images (TEST.SPLIT val); router_stats.json holds the
# router's diagnostics (entropy, TV spread, bank cosine, gradient norms, MI on the validation split).
#
#   BACKBONE=output/demo/backbone/<file>.pt DATA=data OUT=output/router_selection \
#     bash scripts/ampt/router_selection.sh [setting ...]
#
# Settings (default: all); finished runs are skipped (train.py refuses to overwrite them).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${BACKBONE:?set BACKBONE to the demo backbone file (python -m ampt.demo prints it)}"
DATA=${DATA:-data}
OUT=${OUT:-output/router_selection}
SEEDS=${SEEDS:-"1 2 3"}
PY=${PY:-python}
TEMPLATES="a photo of a|a drawing of the|a handwritten digit|a blurry image of"

declare -A SETTINGS=(
  [uniform]="TRAINER.AMPT.ROUTER uniform"
  [linear]=""
  [scale10]="TRAINER.AMPT.ROUTER_INPUT_SCALE 10.0"
  [scale100]="TRAINER.AMPT.ROUTER_INPUT_SCALE 100.0"
  [lr100]="TRAINER.AMPT.ROUTER_LR_MULT 100.0"
  [scale10_templates]="TRAINER.AMPT.ROUTER_INPUT_SCALE 10.0 TRAINER.AMPT.INIT templates"
  [scale10_clean]="TRAINER.AMPT.ROUTER_INPUT_SCALE 10.0 TRAINER.AMPT.ROUTER_INPUT clean"
  [scale10_balance]="TRAINER.AMPT.ROUTER_INPUT_SCALE 10.0 TRAINER.AMPT.BALANCE_WEIGHT 0.1"
  [uniform_templates]="TRAINER.AMPT.ROUTER uniform TRAINER.AMPT.INIT templates"
  [k1x16]="TRAINER.AMPT.ROUTER uniform TRAINER.AMPT.N_PROMPTS 1 TRAINER.AMPT.N_CTX 16"
  [k1x16_lr0005]="TRAINER.AMPT.ROUTER uniform TRAINER.AMPT.N_PROMPTS 1 TRAINER.AMPT.N_CTX 16 OPTIM.LR 0.0005"
  [k2x8_uniform]="TRAINER.AMPT.ROUTER uniform TRAINER.AMPT.N_PROMPTS 2 TRAINER.AMPT.N_CTX 8"
  [k8x2_uniform]="TRAINER.AMPT.ROUTER uniform TRAINER.AMPT.N_PROMPTS 8 TRAINER.AMPT.N_CTX 2"
  [k2x8_scale10]="TRAINER.AMPT.ROUTER_INPUT_SCALE 10.0 TRAINER.AMPT.N_PROMPTS 2 TRAINER.AMPT.N_CTX 8"
  [k8x2_scale10]="TRAINER.AMPT.ROUTER_INPUT_SCALE 10.0 TRAINER.AMPT.N_PROMPTS 8 TRAINER.AMPT.N_CTX 2"
)
NAMES=("$@")
[ ${#NAMES[@]} -eq 0 ] && NAMES=(linear uniform scale10 scale100 scale10_templates scale10_clean uniform_templates lr100 scale10_balance)

for name in "${NAMES[@]}"; do
  [ -n "${SETTINGS[$name]+x}" ] || { echo "unknown setting $name; valid: ${!SETTINGS[*]}" >&2; exit 2; }
  read -r -a opts <<< "${SETTINGS[$name]}"
  if [[ "${SETTINGS[$name]}" == *templates* ]]; then opts+=(TRAINER.AMPT.CTX_INIT "$TEMPLATES"); fi
  for seed in $SEEDS; do
    dir="$OUT/$name/seed$seed"
    if [ -f "$dir/results.json" ] && grep -q '"finished": true' "$dir/results.json"; then
      echo "skip $dir (finished)"; continue
    fi
    echo "== $name seed $seed"
    $PY train.py --root "$DATA" --seed "$seed" --trainer AMPT \
      --dataset-config-file configs/datasets/digits.yaml --config-file configs/trainers/AMPT/digits.yaml \
      --output-dir "$dir" MODEL.BACKBONE.NAME "$BACKBONE" DATASET.NUM_SHOTS 4 TEST.SPLIT val "${opts[@]}"
  done
done
