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
# Run folder (ampt.sweep.layout): output/coop/<DATASET>/shots_<SHOTS>/<CFG>[_ep<EPOCHS>][_bb-<name>]/nctx<N>_csc<C>_ctp<P>/seed<S>
# A run whose results.json says it finished is skipped; FORCE=1 re-runs it.
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/args.sh"

if [ $# -ne 6 ]; then
    die "usage: bash $0 DATASET CFG CTP NCTX SHOTS CSC"
fi
DATASET=$1
CFG=$2
CTP=$3
NCTX=$4
SHOTS=$5
CSC=$6

require_data
for_each_seed coop_train_args train_run "${DATASET}" "${CFG}" "${CTP}" "${NCTX}" "${SHOTS}" "${CSC}"
