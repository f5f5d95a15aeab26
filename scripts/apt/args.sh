# train.py arguments of one APT run, shared by scripts/apt/main.sh and eval.sh (source
# it after ../common.sh; call adversarial_settings first). Sets TRAIN_ARGS.
# Usage: apt_train_args DATASET CFG SHOTS EPS SEED   (NCTX [16], CSC [False], CTP [end])
apt_train_args() {
    local dataset="$1" cfg="$2" shots="$3" eps="$4" seed="$5" dataset_cfg trainer_cfg
    dataset_cfg="$(dataset_config "${dataset}")"
    trainer_cfg="$(trainer_config APT "${cfg}")"
    TRAIN_ARGS=(--root "${DATA}" --seed "${seed}" --trainer APT
        --dataset-config-file "${dataset_cfg}" --config-file "${trainer_cfg}"
        --eps "${eps}" --alpha "${ALPHA}" --steps "${STEPS}" --adv-prompt "${ADV_PROMPT}"
        TRAINER.APT.N_CTX "${NCTX:-16}" TRAINER.APT.CSC "${CSC:-False}"
        TRAINER.APT.CLASS_TOKEN_POSITION "${CTP:-end}" DATASET.NUM_SHOTS "${shots}" "${EXTRA[@]}")
}
