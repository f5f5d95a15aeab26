#!/bin/bash
# Train APT over seeds 1 2 3 (CoOp's main.sh, with APT's attack settings).
#
#   DATA=/path/to/datasets bash scripts/apt/main.sh DATASET CFG SHOTS EPS
#   e.g. bash scripts/apt/main.sh eurosat vit_b32_eps4 16 4
#
# DATASET  configs/datasets/<DATASET>.yaml        CFG  configs/trainers/APT/<CFG>.yaml
# SHOTS    shots per class (1, 2, 4, 8, 16)       EPS  training eps in 1/255 units (1, 4)
# Optional environment (defaults in brackets):
#   ALPHA [2/3 EPS]  STEPS [3]  ADV_PROMPT [onfly | constant | perturbed]
#   PROMPT_ALPHA [config default; perturbed only]  NCTX [16]  CSC [False]  CTP [end]
#   EPOCHS [by shots: 1 -> 50, 2-4 -> 100, 8-16 -> 200, ImageNet 50]
#   ROBUST_WEIGHTS [none; a TeCoA visual weights file]  BACKBONE [the config's]
#   SEEDS ["1 2 3"]  FORCE [0]
# The run folder encodes every setting (ampt.sweep.layout):
#   output/apt/<DATASET>/shots_<SHOTS>/<CFG>_ep<EPOCHS>[_bb-<name>][_robust-<file>]/nctx<N>_csc<C>_ctp<P>/
#       eps_<EPS>_alpha<ALPHA>_steps<STEPS>_<ADV_PROMPT>[_palpha<PROMPT_ALPHA>]/seed<S>
# A run whose results.json says it finished is skipped; FORCE=1 re-runs it.
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

for_each_seed apt_train_args train_run "${DATASET}" "${CFG}" "${SHOTS}" "${EPS}"
