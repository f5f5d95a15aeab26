# FAP's protocol for the deep-prompt trainers (FAP, AdvMaPLe, AdvVLP, AdvVP): few-shot,
# base-to-new and cross-dataset, as FAP's scripts/Adv/<method>/*.sh run them, with this
# toolkit's train.py and evaluate.py. Source it after common.sh, don't run it.
#
# Settings come from the method's config (configs/trainers/<TRAINER>/<CFG>.yaml: eps 1/255,
# alpha 1/255, 2 steps, PGD-100 test); environment: DATA, SEEDS ["1 2 3"], FORCE, OUTPUT,
# PYTHON (common.sh), BACKBONE [the config's], ATTACKS ["clean pgd"], TEST_STEPS [100].
# Run folders: ${OUTPUT}/<trainer>/<setting>/<dataset>/shots_<K>/<CFG>/seed<S>.

zoo_extra() {
    EXTRA=()
    if [ -n "${BACKBONE:-}" ]; then
        EXTRA+=(MODEL.BACKBONE.NAME "${BACKBONE}")
    fi
}

# zoo_train DIR TRAINER DATASET CFG SHOTS SEED [KEY VALUE...]
zoo_train() {
    local dir="$1" trainer="$2" dataset="$3" cfg="$4" shots="$5" seed="$6"
    shift 6
    train_run "${dir}" --root "${DATA}" --seed "${seed}" --trainer "${trainer}" \
        --dataset-config-file "$(dataset_config "${dataset}")" \
        --config-file "$(trainer_config "${trainer}" "${cfg}")" \
        DATASET.NUM_SHOTS "${shots}" "${EXTRA[@]}" "$@"
}

# zoo_evaluate DIR evaluate.py-flags... (PGD-100 at the run's eps, alpha 1/255 as FAP's test)
zoo_evaluate() {
    local dir="$1"
    shift
    "${PYTHON}" "${REPO_ROOT}/evaluate.py" "${dir}" --root "${DATA}" --attack ${ATTACKS:-clean pgd} \
        --steps "${TEST_STEPS:-100}" --alpha 1 "$@" $(force_flag)
}

# Few-shot: zoo_few_shot TRAINER DATASET SHOTS [CFG vit_b32_ep10]
zoo_few_shot() {
    local trainer="$1" dataset="$2" shots="$3" cfg="${4:-vit_b32_ep10}" low
    low="$(echo "${trainer}" | tr '[:upper:]' '[:lower:]')"
    require_data
    zoo_extra
    for seed in ${SEEDS}; do
        zoo_train "${OUTPUT}/${low}/few_shot/${dataset}/shots_${shots}/${cfg}/seed${seed}" \
            "${trainer}" "${dataset}" "${cfg}" "${shots}" "${seed}"
    done
}

# Base-to-new: 16 shots of the base classes, tested on base and new: zoo_base2new TRAINER DATASET [CFG]
zoo_base2new() {
    local trainer="$1" dataset="$2" cfg="${3:-vit_b32_ep10}" low dir
    low="$(echo "${trainer}" | tr '[:upper:]' '[:lower:]')"
    require_data
    zoo_extra
    for seed in ${SEEDS}; do
        dir="${OUTPUT}/${low}/base2new/${dataset}/shots_16/${cfg}/seed${seed}"
        zoo_train "${dir}" "${trainer}" "${dataset}" "${cfg}" 16 "${seed}" DATASET.SUBSAMPLE_CLASSES base
        zoo_evaluate "${dir}" --subsample base
        zoo_evaluate "${dir}" --subsample new
    done
}

# Cross-dataset: ImageNet 16 shots, tested on the 10 other datasets: zoo_cross_dataset TRAINER [CFG vit_b32_ep5]
zoo_cross_dataset() {
    local trainer="$1" cfg="${2:-vit_b32_ep5}" low dir target
    low="$(echo "${trainer}" | tr '[:upper:]' '[:lower:]')"
    require_data
    zoo_extra
    for seed in ${SEEDS}; do
        dir="${OUTPUT}/${low}/cross_dataset/imagenet/shots_16/${cfg}/seed${seed}"
        zoo_train "${dir}" "${trainer}" imagenet "${cfg}" 16 "${seed}"
        for target in caltech101 dtd eurosat oxford_pets oxford_flowers stanford_cars food101 fgvc_aircraft \
                      sun397 ucf101; do
            zoo_evaluate "${dir}" --dataset "${target}"
        done
    done
}
