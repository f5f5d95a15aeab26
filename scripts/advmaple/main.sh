#!/bin/bash
# AdvMaPLe few-shot over seeds 1 2 3 with FAP's protocol (configs/trainers/AdvMaPLe/vit_b32_ep10.yaml).
#
#   DATA=/path/to/datasets bash scripts/advmaple/main.sh DATASET SHOTS [CFG]
#   e.g. bash scripts/advmaple/main.sh eurosat 16
#
# DATASET  configs/datasets/<DATASET>.yaml   SHOTS 1, 2, 4, 8, 16   CFG [vit_b32_ep10]
# Environment: SEEDS ["1 2 3"], FORCE [0], OUTPUT [output], BACKBONE [the config's] (scripts/zoo.sh).
# A run whose results.json says it finished is skipped; FORCE=1 re-runs it.
# The trainer is AdvMaPLe, as FAP's code runs it (FAP's image-to-text coupling); ADVMAPLE=AdvMaPLeOrig
# runs MaPLe's own text-to-image coupling with the same settings (configs/trainers/AdvMaPLeOrig/).
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/../zoo.sh"

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    die "usage: bash $0 DATASET SHOTS [CFG]"
fi
zoo_few_shot "${ADVMAPLE:-AdvMaPLe}" "$1" "$2" "${3:-vit_b32_ep10}"
