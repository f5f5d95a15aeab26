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
#   ROBUST_WEIGHTS [none; a TeCoA visual weights file]  BACKBONE [the config's]  SEEDS ["1 2 3"]  FORCE [0]
#   TRAINER.AMPT keys [the config's]: see scripts/ampt/settings.sh (NPROMPTS, NCTX, ROUTER, ...)
# The run folder encodes every setting (ampt.sweep.layout):
#   output/ampt/<DATASET>/shots_<SHOTS>/<CFG>_ep<EPOCHS>[_bb-<name>][_robust-<file>]/<AMPT settings tag>/
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

require_data
adversarial_settings "${DATASET}" "${SHOTS}" "${EPS}"
ampt_settings "$(trainer_config AMPT "${CFG}")"

for_each_seed ampt_train_args train_run "${DATASET}" "${CFG}" "${SHOTS}" "${EPS}"
