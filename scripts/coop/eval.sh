#!/bin/bash
# Evaluate the CoOp runs of scripts/coop/main.sh (same arguments) with
# evaluate.py over the same seeds, clean and under attack. CoOp trains without
# an attack, so the test eps is required: TEST_EPS (in 1/255 units).
#
#   DATA=/path/to/datasets TEST_EPS=4 bash scripts/coop/eval.sh DATASET CFG CTP NCTX SHOTS CSC
#
# Optional environment: ATTACKS ["clean pgd"], TEST_STEPS [100], EVAL_DATASET
# [cross-dataset target], N_SAMPLES [all], BATCH_SIZE, PROMPT [learned], EPOCHS,
# BACKBONE (as given to main.sh), SEEDS ["1 2 3"], FORCE [0].
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
if [ -z "${TEST_EPS:-}" ] && [ "${ATTACKS:-clean pgd}" != "clean" ]; then
    die "CoOp runs have no training eps: set TEST_EPS (in 1/255 units), e.g. TEST_EPS=4"
fi
for_each_seed coop_train_args evaluate_run "${DATASET}" "${CFG}" "${CTP}" "${NCTX}" "${SHOTS}" "${CSC}"
