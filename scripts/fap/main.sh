#!/bin/bash
# FAP few-shot over seeds 1 2 3 with FAP's protocol (configs/trainers/FAP/vit_b32_ep10.yaml).
#
#   DATA=/path/to/datasets bash scripts/fap/main.sh DATASET SHOTS [CFG]
#   e.g. bash scripts/fap/main.sh eurosat 16
#
# DATASET  configs/datasets/<DATASET>.yaml   SHOTS 1, 2, 4, 8, 16   CFG [vit_b32_ep10]
# Environment: SEEDS ["1 2 3"], FORCE [0], OUTPUT [output], BACKBONE [the config's] (scripts/zoo.sh).
# A run whose results.json says it finished is skipped; FORCE=1 re-runs it.
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/../zoo.sh"

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    die "usage: bash $0 DATASET SHOTS [CFG]"
fi
zoo_few_shot FAP "$1" "$2" "${3:-vit_b32_ep10}"
