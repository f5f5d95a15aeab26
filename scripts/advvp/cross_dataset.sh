#!/bin/bash
# AdvVP cross-dataset (FAP's protocol): ImageNet 16 shots (configs/trainers/AdvVP/vit_b32_ep10.yaml: FAP's
# scripts/Adv/zsrobust/cross_dataset.sh trains AdvVP with its ep10 config, LR 40, 10 epochs),
# then evaluate.py --dataset on the 10 other datasets, PGD-100 at the training eps, over seeds 1 2 3.
#
#   DATA=/path/to/datasets bash scripts/advvp/cross_dataset.sh [CFG]
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/../zoo.sh"

if [ $# -gt 1 ]; then
    die "usage: bash $0 [CFG]"
fi
zoo_cross_dataset AdvVP "${1:-vit_b32_ep10}"
