#!/bin/bash
# Evaluate the AMPT runs of scripts/ampt/main.sh (same arguments and environment)
# with evaluate.py, over the same seeds. Records go to each run's results.json;
# records already there are skipped (FORCE=1 recomputes them). White-box: the
# attacks differentiate through the router.
#
#   DATA=/path/to/datasets bash scripts/ampt/eval.sh DATASET CFG SHOTS EPS
#   e.g. ATTACKS="clean pgd aa" N_SAMPLES=5000 bash scripts/ampt/eval.sh ImageNet vit_b32_eps4 16 4
#        PROMPT=uniform bash scripts/ampt/eval.sh EuroSAT vit_b32_eps4 16 4   # the prompts, weights 1/K
#
# Optional environment, besides main.sh's (which locate the run folder):
#   ATTACKS ["clean pgd"]  TEST_EPS [the run's eps]  TEST_STEPS [100]
#   EVAL_DATASET [the run's dataset; another registered name for cross-dataset]
#   N_SAMPLES [all; a fixed seeded subset size]  BATCH_SIZE [the config's test batch]
#   PROMPT [learned; uniform (the learned prompts mixed with weights 1/K); or a template
#           such as "a photo of a {}."]
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/settings.sh"

if [ $# -ne 4 ]; then
    die "usage: bash $0 DATASET CFG SHOTS EPS"
fi
DATASET=$1
CFG=$2
SHOTS=$3
EPS=$4

require_data
adversarial_settings "${DATASET}" "${SHOTS}" "${EPS}"
ampt_settings "$(trainer_config AMPT "${CFG}")"

for_each_seed ampt_train_args evaluate_run "${DATASET}" "${CFG}" "${SHOTS}" "${EPS}"
