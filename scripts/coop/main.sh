#!/bin/bash
# Train CoOp over seeds 1 2 3, with CoOp's own arguments.
#
#   DATA=/path/to/datasets bash scripts/coop/main.sh DATASET CFG CTP NCTX SHOTS CSC
#   e.g. bash scripts/coop/main.sh eurosat vit_b32 end 16 16 False
#
# DATASET configs/datasets/<DATASET>.yaml   CFG configs/trainers/CoOp/<CFG>.yaml
# CTP class token position (end, middle, front)   NCTX context tokens
# SHOTS shots per class (1, 2, 4, 8, 16)   CSC class-specific context (True, False)
# Optional environment: EPOCHS [the config's OPTIM.MAX_EPOCH; CoOp picks the
# config by shots: ep50 for 1 shot, ep100 for 2-4], BACKBONE [the config's; a CLIP
# name or checkpoint file], SEEDS ["1 2 3"], FORCE [0].
# Run folder: output/coop/<DATASET>/shots_<SHOTS>/<CFG>[_ep<EPOCHS>][_bb-<name>]/nctx<N>_csc<C>_ctp<P>/seed<S>
# A run whose results.json says it finished is skipped; FORCE=1 re-runs it.
source "$(dirname "$0")/../common.sh"

if [ $# -ne 6 ]; then
    die "usage: bash $0 DATASET CFG CTP NCTX SHOTS CSC"
fi
DATASET=$1
CFG=$2
CTP=$3
NCTX=$4
SHOTS=$5
CSC=$6
TRAINER=CoOp

require_data
DATASET_CFG="$(dataset_config "${DATASET}")"
TRAINER_CFG="$(trainer_config "${TRAINER}" "${CFG}")"
EXTRA=()
CFG_TAG="${CFG}"
if [ -n "${EPOCHS:-}" ]; then
    EXTRA+=(OPTIM.MAX_EPOCH "${EPOCHS}")
    CFG_TAG="${CFG}_ep${EPOCHS}"
fi
if [ -n "${BACKBONE:-}" ]; then
    EXTRA+=(MODEL.BACKBONE.NAME "${BACKBONE}")
    CFG_TAG="${CFG_TAG}_bb-$(file_tag "${BACKBONE}")"
fi

for SEED in ${SEEDS}; do
    DIR="${OUTPUT}/coop/${DATASET}/shots_${SHOTS}/${CFG_TAG}/nctx${NCTX}_csc${CSC}_ctp${CTP}/seed${SEED}"
    train_run "${DIR}" \
        --root "${DATA}" \
        --seed "${SEED}" \
        --trainer "${TRAINER}" \
        --dataset-config-file "${DATASET_CFG}" \
        --config-file "${TRAINER_CFG}" \
        TRAINER.COOP.N_CTX "${NCTX}" \
        TRAINER.COOP.CSC "${CSC}" \
        TRAINER.COOP.CLASS_TOKEN_POSITION "${CTP}" \
        DATASET.NUM_SHOTS "${SHOTS}" \
        "${EXTRA[@]}"
done
