#!/bin/bash
# AdvMaPLe base-to-new (FAP's protocol): 16 shots of the base classes, then evaluate.py on the base
# and the new classes (--subsample base|new), PGD-100 at the training eps, over seeds 1 2 3.
#
#   DATA=/path/to/datasets bash scripts/advmaple/base2new.sh DATASET [CFG]
# The trainer is AdvMaPLe, as FAP's code runs it (FAP's image-to-text coupling); ADVMAPLE=AdvMaPLeOrig
# runs MaPLe's own text-to-image coupling with the same settings (configs/trainers/AdvMaPLeOrig/).
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/../zoo.sh"

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    die "usage: bash $0 DATASET [CFG]"
fi
zoo_base2new "${ADVMAPLE:-AdvMaPLe}" "$1" "${2:-vit_b32_ep10}"
