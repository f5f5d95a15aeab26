# AMPT's settings for scripts/ampt/{main,eval}.sh. Source it after ../common.sh:
#   ampt_settings CONFIG_FILE
# sets AMPT_OPTS (TRAINER.AMPT.* KEY VALUE overrides for train.py; the run folder
# names every one of them, see ampt.sweep.layout). Each value is the
# environment variable's when set, else the config file's, else the default of
# trainers/ampt.py:
#   NPROMPTS (N_PROMPTS)  NCTX (N_CTX)  CTX_INIT  INIT  CSC  CTP (CLASS_TOKEN_POSITION)
#   ROUTER  ROUTER_HIDDEN  ROUTER_LR (ROUTER_LR_MULT)  TEMPERATURE  TOPK (TOP_K)  MIX  ATTACK_ROUTER
#   CLEAN_CE (CLEAN_CE_WEIGHT)  TRADES_KL (TRADES_KL_WEIGHT)  BALANCE (BALANCE_WEIGHT)

ampt_settings() {
    local cfg_file="$1" settings
    settings="$("${PYTHON}" - "${REPO_ROOT}" "${cfg_file}" <<'PY'
import os, shlex, sys
sys.path.insert(0, sys.argv[1])
from ampt.api import TRAINER_REGISTRY
from ampt.config import get_cfg_default, merge_from_file
from ampt.plugins import load_plugins

load_plugins("builtin")
cfg = get_cfg_default()
TRAINER_REGISTRY.get("AMPT").add_config(cfg)
merge_from_file(cfg, sys.argv[2])
node = cfg.TRAINER.AMPT
env_keys = (("NPROMPTS", "N_PROMPTS"), ("NCTX", "N_CTX"), ("CTX_INIT", "CTX_INIT"), ("INIT", "INIT"),
            ("CSC", "CSC"), ("CTP", "CLASS_TOKEN_POSITION"), ("ROUTER", "ROUTER"),
            ("ROUTER_HIDDEN", "ROUTER_HIDDEN"), ("ROUTER_LR", "ROUTER_LR_MULT"), ("TEMPERATURE", "TEMPERATURE"), ("TOPK", "TOP_K"),
            ("MIX", "MIX"), ("ATTACK_ROUTER", "ATTACK_ROUTER"), ("CLEAN_CE", "CLEAN_CE_WEIGHT"),
            ("TRADES_KL", "TRADES_KL_WEIGHT"), ("BALANCE", "BALANCE_WEIGHT"))
v = {}
for env, key in env_keys:
    raw = os.environ.get(env)
    v[key] = type(node[key])(raw if not isinstance(node[key], bool) else raw == "True") if raw is not None else node[key]
opts = [x for key in v for x in (f"TRAINER.AMPT.{key}", str(v[key]))]
print("AMPT_OPTS=(" + " ".join(shlex.quote(o) for o in opts) + ")")
PY
)" || die "cannot read the AMPT settings of ${cfg_file}"
    eval "${settings}"
}

# train.py arguments of one AMPT run (main.sh and eval.sh; call adversarial_settings and
# ampt_settings first). Sets TRAIN_ARGS. Usage: ampt_train_args DATASET CFG SHOTS EPS SEED
ampt_train_args() {
    local dataset="$1" cfg="$2" shots="$3" eps="$4" seed="$5" dataset_cfg trainer_cfg
    dataset_cfg="$(dataset_config "${dataset}")"
    trainer_cfg="$(trainer_config AMPT "${cfg}")"
    TRAIN_ARGS=(--root "${DATA}" --seed "${seed}" --trainer AMPT
        --dataset-config-file "${dataset_cfg}" --config-file "${trainer_cfg}"
        --eps "${eps}" --alpha "${ALPHA}" --steps "${STEPS}" --adv-prompt "${ADV_PROMPT}"
        "${AMPT_OPTS[@]}" DATASET.NUM_SHOTS "${shots}" "${EXTRA[@]}")
}
