#!/bin/bash
# Evaluate the APT runs of scripts/apt/main.sh (same arguments and environment)
# with evaluate.py, over the same seeds. Records go to each run's results.json;
# records already there are skipped (FORCE=1 recomputes them).
#
#   DATA=/path/to/datasets bash scripts/apt/eval.sh DATASET CFG SHOTS EPS
#   e.g. ATTACKS="clean pgd aa" N_SAMPLES=5000 bash scripts/apt/eval.sh imagenet vit_b32_eps4 16 4
#
# Optional environment, besides main.sh's (which locate the run folder):
#   ATTACKS ["clean pgd"]  TEST_EPS [the run's eps]  TEST_STEPS [100]
#   EVAL_DATASET [the run's dataset; another registered name for cross-dataset]
#   N_SAMPLES [all; a fixed seeded subset size]  BATCH_SIZE [the config's test batch]
#   PROMPT [learned; or a template such as "a photo of a {}."]
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/args.sh"

if [ $# -ne 4 ]; then
    die "usage: bash $0 DATASET CFG SHOTS EPS"
fi
DATASET=$1
CFG=$2
SHOTS=$3
EPS=$4

require_data
adversarial_settings "${DATASET}" "${SHOTS}" "${EPS}"

for_each_seed apt_train_args evaluate_run "${DATASET}" "${CFG}" "${SHOTS}" "${EPS}"
