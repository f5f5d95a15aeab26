#!/bin/bash
# AdvMaPLe cross-dataset (FAP's protocol): ImageNet 16 shots (configs/trainers/AdvMaPLe/vit_b32_ep5.yaml),
# then evaluate.py --dataset on the 10 other datasets, PGD-100 at the training eps, over seeds 1 2 3.
#
#   DATA=/path/to/datasets bash scripts/advmaple/cross_dataset.sh [CFG]
# The trainer is AdvMaPLe, as FAP's code runs it (FAP's image-to-text coupling); ADVMAPLE=AdvMaPLeOrig
# runs MaPLe's own text-to-image coupling with the same settings (configs/trainers/AdvMaPLeOrig/).
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/../zoo.sh"

if [ $# -gt 1 ]; then
    die "usage: bash $0 [CFG]"
fi
zoo_cross_dataset "${ADVMAPLE:-AdvMaPLe}" "${1:-vit_b32_ep5}"
