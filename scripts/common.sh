# Shared helpers for scripts/<method>/*.sh. Source it, don't run it:
#   source "$(dirname "$0")/../common.sh"
#
# Environment read by every script:
#   DATA      dataset root (required)
#   PYTHON    interpreter (default: python)
#   SEEDS     seeds to loop over (default: "1 2 3")
#   FORCE=1   re-run finished runs / recompute existing records (passes --force)
#   OUTPUT    root of the run folders (default: output, relative to the current folder)

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
SEEDS="${SEEDS:-1 2 3}"
OUTPUT="${OUTPUT:-output}"
FORCE="${FORCE:-0}"

die() {
    echo "error: $*" >&2
    exit 2
}

# The dataset root from $DATA; an unset or missing root is an error.
require_data() {
    if [ -z "${DATA:-}" ]; then
        die "set DATA to the dataset root, e.g. DATA=/path/to/datasets bash $0 ..."
    fi
    if [ ! -d "${DATA}" ]; then
        die "DATA=${DATA} is not a folder"
    fi
}

# Path of configs/datasets/<NAME>.yaml; a missing file lists the valid names.
dataset_config() {
    local file="${REPO_ROOT}/configs/datasets/$1.yaml"
    if [ ! -f "${file}" ]; then
        die "no dataset config ${file}; valid: $(cd "${REPO_ROOT}/configs/datasets" && ls ./*.yaml 2>/dev/null | sed 's|^\./||; s|\.yaml$||' | tr '\n' ' ')"
    fi
    echo "${file}"
}

# Path of configs/trainers/<TRAINER>/<CFG>.yaml; a missing file lists the valid names.
trainer_config() {
    local file="${REPO_ROOT}/configs/trainers/$1/$2.yaml"
    if [ ! -f "${file}" ]; then
        die "no trainer config ${file}; valid: $(cd "${REPO_ROOT}/configs/trainers/$1" 2>/dev/null && ls ./*.yaml 2>/dev/null | sed 's|^\./||; s|\.yaml$||' | tr '\n' ' ')"
    fi
    echo "${file}"
}

# Exit status 0 when DIR/results.json says the run finished (run.finished true).
run_finished() {
    local results="$1/results.json"
    [ -f "${results}" ] || return 1
    "${PYTHON}" -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1])).get("run", {}).get("finished") is True else 1)' "${results}"
}

# "--force" when FORCE=1, nothing otherwise.
force_flag() {
    if [ "${FORCE}" = "1" ]; then
        echo "--force"
    fi
}

# CoOp's epochs by shots: 1 shot 50, 2-4 shots 100, 8+ shots (or all data) 200; ImageNet 50.
epochs_for() {
    local dataset="$1" shots="$2"
    case "$(echo "${dataset}" | tr '[:upper:]' '[:lower:]')" in
        imagenet) echo 50; return ;;
    esac
    if [ "${shots}" -eq 1 ]; then
        echo 50
    elif [ "${shots}" -ge 2 ] && [ "${shots}" -le 4 ]; then
        echo 100
    else
        echo 200
    fi
}

# APT's training step size: 2/3 of eps, two decimals (4 -> 2.67, 1 -> 0.67).
default_alpha() {
    "${PYTHON}" -c 'import sys; print(f"{float(sys.argv[1]) * 2 / 3:.2f}")' "$1"
}

# Refuse an eps written as a fraction (0.0157): every eps here is in 1/255 units.
check_eps() {
    local rc=0
    "${PYTHON}" -c 'import sys; e = float(sys.argv[1]); sys.exit(0 if e == 0 or e >= 1 else 3)' "$1" || rc=$?
    if [ "${rc}" -eq 3 ]; then
        die "eps $1 looks like a fraction; eps is in 1/255 units (write 4 for 4/255)"
    elif [ "${rc}" -ne 0 ]; then
        die "eps $1 is not a number (or ${PYTHON} cannot run; set PYTHON)"
    fi
}

# Train into DIR unless its results.json says it finished (FORCE=1 re-runs).
# Usage: train_run DIR train.py-arguments...
train_run() {
    local dir="$1"
    shift
    if [ "${FORCE}" != "1" ] && run_finished "${dir}"; then
        echo "Finished run at ${dir} (skipped; FORCE=1 re-runs it)"
        return 0
    fi
    "${PYTHON}" "${REPO_ROOT}/train.py" --output-dir "${dir}" $(force_flag) "$@"
}

# Run evaluate.py on DIR with the settings from the environment:
# ATTACKS ["clean pgd"], TEST_EPS, TEST_STEPS, EVAL_DATASET, N_SAMPLES, BATCH_SIZE, PROMPT.
evaluate_run() {
    local dir="$1"
    if ! run_finished "${dir}"; then
        echo "No finished run at ${dir} (skipped; train it first)" >&2
        return 0
    fi
    local args=(--attack ${ATTACKS:-clean pgd} --root "${DATA}")
    [ -n "${TEST_EPS:-}" ] && check_eps "${TEST_EPS}" && args+=(--eps "${TEST_EPS}")
    [ -n "${TEST_STEPS:-}" ] && args+=(--steps "${TEST_STEPS}")
    [ -n "${EVAL_DATASET:-}" ] && args+=(--dataset "${EVAL_DATASET}")
    [ -n "${N_SAMPLES:-}" ] && args+=(--n-samples "${N_SAMPLES}")
    [ -n "${BATCH_SIZE:-}" ] && args+=(--batch-size "${BATCH_SIZE}")
    [ -n "${PROMPT:-}" ] && args+=(--prompt "${PROMPT}")
    "${PYTHON}" "${REPO_ROOT}/evaluate.py" "${dir}" "${args[@]}" $(force_flag)
}

# Settings shared by the adversarial methods' scripts (APT, AMPT), from the
# environment, with their defaults; sets ALPHA STEPS ADV_PROMPT EPOCHS and EXTRA
# (train.py KEY VALUE pairs).
# Usage: adversarial_settings DATASET SHOTS EPS
#   ALPHA [2/3 EPS]  STEPS [3]  ADV_PROMPT [onfly]  PROMPT_ALPHA [config; perturbed only]
#   EPOCHS [by shots]  ROBUST_WEIGHTS [none]  BACKBONE [the config's; a CLIP name or file]
adversarial_settings() {
    local dataset="$1" shots="$2" eps="$3"
    check_eps "${eps}"
    ALPHA="${ALPHA:-$(default_alpha "${eps}")}"
    STEPS="${STEPS:-3}"
    ADV_PROMPT="${ADV_PROMPT:-onfly}"
    EPOCHS="${EPOCHS:-$(epochs_for "${dataset}" "${shots}")}"
    EXTRA=(OPTIM.MAX_EPOCH "${EPOCHS}")
    if [ -n "${BACKBONE:-}" ]; then
        EXTRA+=(MODEL.BACKBONE.NAME "${BACKBONE}")
    fi
    if [ -n "${ROBUST_WEIGHTS:-}" ]; then
        EXTRA+=(MODEL.BACKBONE.ROBUST_WEIGHTS "${ROBUST_WEIGHTS}")
    fi
    if [ -n "${PROMPT_ALPHA:-}" ]; then
        EXTRA+=(ADV.TRAIN.PROMPT_ALPHA "${PROMPT_ALPHA}")
    fi
}

# RUN_DIRS: the run folder of a train.py command line (without --output-dir) for each seed of its
# --seed, which may hold several ("1 2 3"), in that order, under ${OUTPUT}, derived in one process.
# ampt.sweep.layout owns the layout; the sweep runner (python -m ampt.sweep) uses the same function,
# so each finds the other's runs. Usage: run_dirs train.py-arguments...; then "${RUN_DIRS[i]}".
run_dirs() {
    local folders
    folders="$(PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}" "${PYTHON}" -m ampt.sweep.layout \
        --output "${OUTPUT}" "$@")" || die "cannot derive the run folders (see the message above)"
    IFS=$'\n' read -r -d '' -a RUN_DIRS <<< "${folders}" || true
}

# For each seed S of ${SEEDS}: BUILDER ARGS... S sets TRAIN_ARGS, then ACTION RUN_DIR TRAIN_ARGS... runs
# (train_run, or evaluate_run, which reads RUN_DIR only); the folders of all seeds come from one
# run_dirs call. Usage: for_each_seed BUILDER ACTION ARGS...
for_each_seed() {
    local builder="$1" action="$2" seed i=0
    shift 2
    "${builder}" "$@" "${SEEDS}"
    run_dirs "${TRAIN_ARGS[@]}"
    for seed in ${SEEDS}; do
        "${builder}" "$@" "${seed}"
        "${action}" "${RUN_DIRS[i]}" "${TRAIN_ARGS[@]}"
        i=$((i + 1))
    done
}
