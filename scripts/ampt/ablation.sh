#!/bin/bash
# AMPT's ablations at eps 4/255 (scripts/ampt/main.sh per config, seeds 1 2 3), then
# evaluate.py on each run (clean + PGD-100), plus the uniform-weights evaluation of
# the default run ("with vs without the router" at test time):
#
#   DATA=/path/to/datasets bash scripts/ampt/ablation.sh DATASET SHOTS
#   e.g. bash scripts/ampt/ablation.sh EuroSAT 16
#
# Configs (configs/trainers/AMPT/):
#   vit_b32_eps4            K=4 prompts x 4 tokens, linear router (the default)
#   vit_b32_eps4_k1_l16     one prompt of 16 tokens (same token budget): more prompts vs a longer prompt
#   vit_b32_eps4_uniform    K=4 prompts, weights 1/K (no router)
#   vit_b32_eps4_mixlogits  router weights mix the per-prompt logits instead of the text features
#   vit_b32_eps4_k2, vit_b32_eps4_k8   number of prompts
# CONFIGS="..." picks a subset; EVAL=0 skips the evaluations; the environment of
# main.sh / eval.sh applies to every run (FORCE=1, SEEDS, EPOCHS, ROBUST_WEIGHTS, ...).
source "$(dirname "$0")/../common.sh"

if [ $# -ne 2 ]; then
    die "usage: bash $0 DATASET SHOTS"
fi
DATASET=$1
SHOTS=$2
EPS=4
HERE="$(dirname "$0")"
CONFIGS="${CONFIGS:-vit_b32_eps4 vit_b32_eps4_k1_l16 vit_b32_eps4_uniform vit_b32_eps4_mixlogits vit_b32_eps4_k2 vit_b32_eps4_k8}"

require_data
for CFG in ${CONFIGS}; do
    bash "${HERE}/main.sh" "${DATASET}" "${CFG}" "${SHOTS}" "${EPS}"
done
if [ "${EVAL:-1}" = "1" ]; then
    for CFG in ${CONFIGS}; do
        bash "${HERE}/eval.sh" "${DATASET}" "${CFG}" "${SHOTS}" "${EPS}"
        if [ "${CFG}" = "vit_b32_eps4" ]; then
            PROMPT=uniform bash "${HERE}/eval.sh" "${DATASET}" "${CFG}" "${SHOTS}" "${EPS}"
        fi
    done
fi
