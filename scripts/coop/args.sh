# train.py arguments of one CoOp run, shared by scripts/coop/main.sh and eval.sh
# (source it after ../common.sh). Sets TRAIN_ARGS; EPOCHS and BACKBONE come from the environment.
# Usage: coop_train_args DATASET CFG CTP NCTX SHOTS CSC SEED
coop_train_args() {
    local dataset="$1" cfg="$2" ctp="$3" nctx="$4" shots="$5" csc="$6" seed="$7" dataset_cfg trainer_cfg
    dataset_cfg="$(dataset_config "${dataset}")"
    trainer_cfg="$(trainer_config CoOp "${cfg}")"
    TRAIN_ARGS=(--root "${DATA}" --seed "${seed}" --trainer CoOp
        --dataset-config-file "${dataset_cfg}" --config-file "${trainer_cfg}"
        TRAINER.COOP.N_CTX "${nctx}" TRAINER.COOP.CSC "${csc}" TRAINER.COOP.CLASS_TOKEN_POSITION "${ctp}"
        DATASET.NUM_SHOTS "${shots}")
    if [ -n "${EPOCHS:-}" ]; then
        TRAIN_ARGS+=(OPTIM.MAX_EPOCH "${EPOCHS}")
    fi
    if [ -n "${BACKBONE:-}" ]; then
        TRAIN_ARGS+=(MODEL.BACKBONE.NAME "${BACKBONE}")
    fi
}
