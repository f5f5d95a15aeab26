# AMPT's settings for scripts/ampt/{main,eval}.sh. Source it after ../common.sh:
#   ampt_settings CONFIG_FILE
# sets AMPT_OPTS (TRAINER.AMPT.* KEY VALUE overrides for train.py) and AMPT_TAG
# (the run-folder part naming every TRAINER.AMPT setting). Each value is the
# environment variable's when set, else the config file's, else the default of
# trainers/ampt.py:
#   NPROMPTS (N_PROMPTS)  NCTX (N_CTX)  CTX_INIT  INIT  CSC  CTP (CLASS_TOKEN_POSITION)
#   ROUTER  ROUTER_HIDDEN  ROUTER_LR (ROUTER_LR_MULT)  TEMPERATURE  TOPK (TOP_K)  MIX  ATTACK_ROUTER
#   CLEAN_CE (CLEAN_CE_WEIGHT)  TRADES_KL (TRADES_KL_WEIGHT)  BALANCE (BALANCE_WEIGHT)
# Tag: k<K>_l<L>_<ROUTER>[h<HIDDEN>]_lrx<ROUTER_LR>_t<TEMPERATURE>_top<TOPK>_<MIX>_init-<INIT>[-<words>]
#      _csc<CSC>_ctp<CTP>_ce<CLEAN_CE>_kl<TRADES_KL>_bal<BALANCE>_atk<ATTACK_ROUTER>

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
g = lambda x: f"{float(x):g}"
init = f"init-{v['INIT']}" + (f"-{v['CTX_INIT'].replace(' ', '_')}" if v["CTX_INIT"] else "")
hidden = f"h{v['ROUTER_HIDDEN']}" if v["ROUTER"] == "mlp" else ""
tag = (f"k{v['N_PROMPTS']}_l{v['N_CTX']}_{v['ROUTER']}{hidden}_lrx{g(v['ROUTER_LR_MULT'])}_t{g(v['TEMPERATURE'])}_top{v['TOP_K']}_{v['MIX']}"
       f"_{init}_csc{v['CSC']}_ctp{v['CLASS_TOKEN_POSITION']}_ce{g(v['CLEAN_CE_WEIGHT'])}"
       f"_kl{g(v['TRADES_KL_WEIGHT'])}_bal{g(v['BALANCE_WEIGHT'])}_atk{v['ATTACK_ROUTER']}")
opts = [x for key in v for x in (f"TRAINER.AMPT.{key}", str(v[key]))]
print("AMPT_TAG=" + shlex.quote(tag))
print("AMPT_OPTS=(" + " ".join(shlex.quote(o) for o in opts) + ")")
PY
)" || die "cannot read the AMPT settings of ${cfg_file}"
    eval "${settings}"
}
