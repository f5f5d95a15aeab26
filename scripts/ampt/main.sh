#!/bin/bash
# Train AMPT over seeds 1 2 3 (CoOp's main.sh, with APT's attack settings and AMPT's keys).
#
#   DATA=/path/to/datasets bash scripts/ampt/main.sh DATASET CFG SHOTS EPS
#   e.g. bash scripts/ampt/main.sh EuroSAT vit_b32_eps4 16 4
#        NPROMPTS=8 ROUTER=mlp bash scripts/ampt/main.sh EuroSAT vit_b32_eps4 16 4
#
# DATASET  configs/datasets/<DATASET>.yaml        CFG  configs/trainers/AMPT/<CFG>.yaml
# SHOTS    shots per class (1, 2, 4, 8, 16)       EPS  training eps in 1/255 units (1, 4)
# Optional environment (defaults in brackets):
#   ALPHA [2/3 EPS]  STEPS [3]  ADV_PROMPT [onfly | constant | perturbed]
#   EPOCHS [by shots: 1 -> 50, 2-4 -> 100, 8-16 -> 200, ImageNet 50]
#   ROBUST_WEIGHTS [none; a TeCoA visual weights file]  SEEDS ["1 2 3"]  FORCE [0]
#   TRAINER.AMPT keys [the config's]: see scripts/ampt/settings.sh (NPROMPTS, NCTX, ROUTER, ...)
# The run folder encodes every setting:
#   output/ampt/<DATASET>/shots_<SHOTS>/<CFG>_ep<EPOCHS>[_robust-<file>]/<AMPT settings tag>/
#       eps_<EPS>_alpha<ALPHA>_steps<STEPS>_<ADV_PROMPT>/seed<S>
# A run whose results.json says it finished is skipped; FORCE=1 re-runs it.
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/settings.sh"

if [ $# -ne 4 ]; then
    die "usage: bash $0 DATASET CFG SHOTS EPS"
fi
DATASET=$1
CFG=$2
SHOTS=$3
EPS=$4
TRAINER=AMPT

require_data
check_eps "${EPS}"
ALPHA="${ALPHA:-$(default_alpha "${EPS}")}"
STEPS="${STEPS:-3}"
ADV_PROMPT="${ADV_PROMPT:-onfly}"
EPOCHS="${EPOCHS:-$(epochs_for "${DATASET}" "${SHOTS}")}"
DATASET_CFG="$(dataset_config "${DATASET}")"
TRAINER_CFG="$(trainer_config "${TRAINER}" "${CFG}")"
ampt_settings "${TRAINER_CFG}"

EXTRA=()
CFG_TAG="${CFG}_ep${EPOCHS}"
if [ -n "${ROBUST_WEIGHTS:-}" ]; then
    EXTRA+=(MODEL.BACKBONE.ROBUST_WEIGHTS "${ROBUST_WEIGHTS}")
    CFG_TAG="${CFG_TAG}_robust-$(basename "${ROBUST_WEIGHTS}" | sed 's/\.pth\.tar$//; s/\.[^.]*$//')"
fi
ATK_TAG="eps_${EPS}_alpha${ALPHA}_steps${STEPS}_${ADV_PROMPT}"

for SEED in ${SEEDS}; do
    DIR="${OUTPUT}/ampt/${DATASET}/shots_${SHOTS}/${CFG_TAG}/${AMPT_TAG}/${ATK_TAG}/seed${SEED}"
    train_run "${DIR}" \
        --root "${DATA}" \
        --seed "${SEED}" \
        --trainer "${TRAINER}" \
        --dataset-config-file "${DATASET_CFG}" \
        --config-file "${TRAINER_CFG}" \
        --eps "${EPS}" \
        --alpha "${ALPHA}" \
        --steps "${STEPS}" \
        --adv-prompt "${ADV_PROMPT}" \
        "${AMPT_OPTS[@]}" \
        DATASET.NUM_SHOTS "${SHOTS}" \
        OPTIM.MAX_EPOCH "${EPOCHS}" \
        "${EXTRA[@]}"
done
