"""Sweeps: expansion and validation, the local pool (retry, skip), submitit's local executor, status,
and the run layout shared with the shell scripts.

Every cell that runs is a ``train.py`` or ``evaluate.py`` process (seconds of imports each): one test
checks the local pool and the shell scripts on one output folder, so that no cell runs twice.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml

from ampt.models.tiny import build_tiny_clip, save_clip_state_dict
from ampt.sweep import __main__ as sweep_cli
from ampt.sweep.cell import method_label
from ampt.sweep.executors import local_slots
from ampt.sweep.expand import expand
from ampt.sweep.spec import SweepError, load_sweep

REPO = Path(__file__).resolve().parents[1]
FAST = ["OPTIM.MAX_EPOCH", 1, "DATALOADER.TEST.BATCH_SIZE", 300]


@pytest.fixture(scope="module")
def assets(digits_root, tmp_path_factory):
    """(Digits data root (conftest), a tiny CLIP checkpoint), shared by the module."""
    return digits_root, save_clip_state_dict(build_tiny_clip(seed=0), tmp_path_factory.mktemp("sweep") / "tiny.pt")


def write_sweep(path: Path, **content) -> str:
    path.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
    return str(path)


def base_sweep(root: Path, out: Path, backbone: Path, **extra) -> dict:
    sweep = {"name": "t", "data_root": str(root), "output_root": str(out), "backbone": str(backbone),
             "grid": {"dataset": ["digits"], "shots": [1], "seed": [1, 2]},
             "methods": {"CoOp": {"trainer": "CoOp", "config": "configs/trainers/CoOp/digits.yaml", "opts": FAST}},
             "executor": {"name": "local", "workers": 2, "threads": 1}}
    return {**sweep, **extra}


def test_expansion_grid_times_methods_with_a_config_key_axis(tmp_path, assets):
    root, backbone = assets
    spec = base_sweep(root, tmp_path / "out", backbone)
    spec["grid"]["ADV.TRAIN.EPS"] = [1, 4]
    spec["grid"]["OPTIM.LR"] = [0.002]
    spec["methods"]["APT"] = {"trainer": "APT", "config": "configs/trainers/APT/digits.yaml",
                              "grid": {"seed": [7]}}  # a method's own axis replaces the sweep's
    cells = expand(load_sweep(write_sweep(tmp_path / "s.yaml", **spec)))
    assert [c.method for c in cells] == ["CoOp"] * 4 + ["APT"] * 2
    assert len({c.run_dir for c in cells}) == 6
    apt = [c for c in cells if c.method == "APT"]
    assert [c.spec.seed for c in apt] == [7, 7]
    assert "eps_1_alpha0.67_steps3_onfly" in apt[0].run_dir and "eps_4_alpha2.67_steps3_onfly" in apt[1].run_dir
    assert [c.spec.config_node().ADV.TRAIN.EPS for c in apt] == [1.0, 4.0]
    coop = cells[0]  # not adversarial: the axis is an extra folder level
    assert "ADV.TRAIN.EPS-1" in coop.run_dir and coop.run_dir.endswith("seed1")
    assert "_ep1_bb-tiny" in coop.run_dir
    assert method_label(coop) == "CoOp LR=0.002"  # the report's cell already separates the train eps
    cmd = coop.spec.train_command(Path(coop.run_dir))
    assert cmd[1].endswith("train.py") and cmd[cmd.index("--trainer") + 1] == "CoOp"
    assert cmd[-2:] == ["DATASET.NUM_SHOTS", "1"] and "ADV.TRAIN.EPS" in cmd


@pytest.mark.parametrize("change, message", [
    ({"methods": {"X": {"trainer": "CoOpp", "config": "configs/trainers/CoOp/digits.yaml"}}},
     'method X: Unknown trainer "CoOpp". Did you mean "CoOp"?'),
    ({"methods": {"X": {"trainer": "CoOp", "config": "configs/trainers/CoOp/digits.yaml",
                        "opts": ["OPTIM.LRR", 0.1]}}}, 'method X: Unknown config key (from command line) "OPTIM.LRR"'),
    ({"grid": {"dataset": ["digits"], "TRAINER.COOP.N_CTXX": [2]}}, 'Did you mean "TRAINER.COOP.N_CTX"?'),
    ({"grid": {"dataset": ["digitz"]}}, 'Did you mean "digits"?'),
    ({"executr": {}}, 'Did you mean "executor"?'),
])
def test_a_bad_method_or_key_is_named_before_anything_runs(tmp_path, assets, capsys, change, message):
    root, backbone = assets
    path = write_sweep(tmp_path / "s.yaml", **{**base_sweep(root, tmp_path / "out", backbone), **change})
    with pytest.raises(SweepError) as err:
        expand(load_sweep(path))
    assert message in str(err.value)
    assert sweep_cli.cli(["run", path]) == 2  # one line, exit 2, nothing ran
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "out").exists()


def test_local_workers_pin_gpus_or_threads():
    assert local_slots({"name": "local", "gpus": "0,1", "workers": 4}) == [
        {"OMP_NUM_THREADS": t, "CUDA_VISIBLE_DEVICES": g}
        for t, g in zip([os.environ.get("OMP_NUM_THREADS", "1")] * 4, "0101")]
    assert local_slots({"name": "local", "workers": 2, "threads": 3}) == [{"OMP_NUM_THREADS": "3"}] * 2
    with pytest.raises(SweepError, match='Did you mean "workers"'):
        local_slots({"name": "local", "worker": 2})


def _fix_when_failed(out: Path, broken: Path, source: Path, seen: list, stop: threading.Event) -> None:
    """Make the missing backbone appear once a cell has recorded a failed attempt."""
    while not stop.is_set():
        for state in (out / ".sweep" / "cells").glob("*.json"):
            data = json.loads(state.read_text())
            if data.get("state") == "failed":
                seen.append(data)
                shutil.copy(source, broken)
                return
        time.sleep(0.05)


def test_a_base_to_new_record_does_not_answer_an_all_classes_entry():
    from ampt.sweep.cell import record_matches

    record = {"split": "test", "attack": "clean", "n_samples": 10, "prompt": "learned", "subsample": "new",
              "precision": "fp32"}
    assert not record_matches(record, {"attack": "clean"})
    assert record_matches(record, {"attack": "clean", "subsample": "new"})
    assert record_matches({**record, "subsample": "all"}, {"attack": "clean"})
    assert not record_matches({**record, "seed": 1}, {"attack": "clean", "subsample": "new", "seed": 0})


def test_a_record_answers_an_entry_only_with_every_setting_of_its_key():
    from ampt.sweep.cell import record_matches

    pgd = {"split": "test", "attack": "pgd", "eps": 4, "steps": 100, "alpha": 1.0, "n_samples": 10,
           "prompt": "learned", "precision": "fp32", "seed": 0}
    assert record_matches(pgd, {"attack": "pgd"}, train_eps=4)  # steps 100 and alpha eps/4 are the defaults
    assert not record_matches(pgd, {"attack": "pgd"}, train_eps=1)  # the run's training eps is the default eps
    assert not record_matches(pgd, {"attack": "pgd", "eps": 4, "restarts": 5})
    assert record_matches({**pgd, "restarts": 5}, {"attack": "pgd", "eps": 4, "restarts": 5})
    assert not record_matches({**pgd, "precision": "bf16"}, {"attack": "pgd", "eps": 4})
    assert record_matches({**pgd, "precision": "bf16"}, {"attack": "pgd", "eps": 4, "precision": "bf16"})
    assert not record_matches({**pgd, "bpda": True}, {"attack": "pgd", "eps": 4})
    assert not record_matches({k: v for k, v in pgd.items() if k != "precision"}, {"attack": "pgd", "eps": 4})
    aa_rand = {"split": "test", "attack": "aa-rand", "eps": 4, "steps": 0, "precision": "fp32", "eot_iter": 20}
    assert not record_matches(aa_rand, {"attack": "aa-rand", "eps": 4})  # aa-rand records eot_iter only in config
    tapt = {**pgd, "test_time": "tapt", "test_time_threat": "adaptive",
            "test_time_options": "align_from=0,align_to=9,align_weight=100,crop_scale_min=0.08,lr=0.0005,quantize=false,"
                                 "select=0.1,steps=1,views=64,weight_decay=0.01"}
    assert record_matches(tapt, {"attack": "pgd", "eps": 4, "test_time": "tapt", "threat": "adaptive"})
    assert not record_matches(tapt, {"attack": "pgd", "eps": 4, "test_time": "tapt"})  # non-adaptive by default
    assert not record_matches(tapt, {"attack": "pgd", "eps": 4})  # a test-time number answers no plain entry
    assert not record_matches(pgd, {"attack": "pgd", "eps": 4, "test_time": "tapt", "threat": "adaptive"})
    assert not record_matches(tapt, {"attack": "pgd", "eps": 4, "test_time": "tapt", "threat": "adaptive",
                                     "test_time_options": "views=8"})
    custom = {"split": "test", "attack": "aa-custom", "eps": 4, "steps": 0, "precision": "fp32",
              "attack_options": "apgd-ce,apgd-t"}
    assert record_matches(custom, {"attack": "aa-custom", "eps": 4, "aa_attacks": "apgd-ce, apgd-t"})
    assert not record_matches(custom, {"attack": "aa-custom", "eps": 4, "aa_attacks": "apgd-ce,apgd-dlr"})


def test_evaluate_entries_are_checked_before_anything_runs(tmp_path):
    base = {"name": "t", "data_root": str(tmp_path), "output_root": str(tmp_path / "out"), "grid": {"dataset": ["Digits"]},
            "methods": {"CoOp": {"trainer": "CoOp", "config": "configs/trainers/CoOp/digits.yaml"}}}
    cases = [({"attack": "pgdd"}, 'Unknown attack in an evaluate entry "pgdd". Did you mean "pgd"'),
             ({"attack": "pgd", "eps": 0.0157}, "looks like a fraction of 1"),
             ({"attack": "aa", "restarts": 3}, "attack aa takes no restarts"),
             ({"attack": "aa-custom"}, "aa-custom needs its attacks, e.g. apgd-ce,apgd-t"),
             ({"audit": {"n_sample": 3}}, 'Unknown key in an audit entry "n_sample". Did you mean "n_samples"'),
             ({"audit": "yes"}, "audit is true or a mapping"),
             ({"attack": "pgd", "test_time": "tpt"}, 'Unknown test-time method "tpt". Did you mean "tapt"'),
             ({"attack": "pgd", "test_time": "tapt", "test_time_options": "view=4"}, "valid: align_from"),
             ({"attack": "pgd", "test_time": "tapt", "threat": "white-box"}, "threat is one of non-adaptive, adaptive"),
             ({"attack": "pgd", "threat": "adaptive"}, "need a test_time method")]
    for entry, message in cases:
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump({**base, "evaluate": [entry]}))
        with pytest.raises(SweepError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_sweep(str(path))
    path.write_text(yaml.safe_dump({**base, "evaluate": [{"attack": "aa-rand"}, {"attack": "apgd-t", "eps": 1},
                                                          {"audit": True}, {"audit": {"n_samples": 50}}]}))
    assert [e.get("attack", "audit") for e in load_sweep(str(path)).evaluate] == ["aa-rand", "apgd-t", "audit", "audit"]


def test_test_time_method_lists_are_one_entry_each_and_one_call(tmp_path):
    from ampt.sweep.requests import evaluate_command, group_evaluations

    sweep = {"name": "t", "data_root": str(tmp_path), "output_root": str(tmp_path / "out"),
             "grid": {"dataset": ["Digits"]},
             "methods": {"APT": {"trainer": "APT", "config": "configs/trainers/APT/digits.yaml"}},
             "evaluate": [{"attack": "pgd", "eps": 4, "test_time": ["tapt", "rtpt"], "test_time_options": "views=8"},
                          {"attack": "aa", "eps": 4, "test_time": ["tapt", "rtpt"], "test_time_options": "views=8"},
                          {"attack": "pgd", "eps": 4, "test_time": "tapt", "test_time_options": "views=8",
                           "threat": "adaptive"}]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep))
    entries = load_sweep(str(path)).evaluate
    assert [(e["attack"], e["test_time"]) for e in entries] == [
        ("pgd", "tapt"), ("pgd", "rtpt"), ("aa", "tapt"), ("aa", "rtpt"), ("pgd", "tapt")]
    grouped = group_evaluations(entries)
    assert [(g["attack"], g["test_time"], g.get("threat")) for g in grouped] == [
        (["pgd", "aa"], ["tapt", "rtpt"], None), (["pgd"], ["tapt"], "adaptive")]
    command = evaluate_command("RUN", "DATA", grouped[0])
    assert command[command.index("--test-time"):][:3] == ["--test-time", "tapt", "rtpt"]
    assert command[command.index("--attack") + 1:command.index("--attack") + 3] == ["pgd", "aa"]


def test_a_sweep_asks_for_field_attack_columns_and_an_audit(tmp_path, assets, capsys):
    """One finished zero-shot cell evaluated by apgd-t and aa-rand (one evaluate.py call: the entries differ only
    in their attack) and audited, then reported."""
    root, backbone = assets
    spec = base_sweep(root, tmp_path / "out", backbone, evaluate=[
        {"attack": "apgd-t", "eps": 16, "steps": 2, "n_samples": 2},
        {"attack": "aa-rand", "eps": 16, "steps": 2, "n_samples": 2},
        {"audit": {"eps": 4, "n_samples": 6, "pgd_steps": 3, "strong_steps": 3, "restarts": 1, "queries": 20,
                   "large_eps": 255, "checks": ["determinism", "convergence", "black_box"]}}])
    spec["grid"]["seed"] = [1]
    spec["methods"] = {"ZS": {"trainer": "ZeroshotCLIP", "config": "configs/trainers/ZeroshotCLIP/digits.yaml"}}
    path = write_sweep(tmp_path / "s.yaml", **spec)
    (cell,) = expand(load_sweep(path))
    import train  # the run trained in this process (the runner's own train.py: test_sweep_runs.py)

    assert train.main(cell.spec.train_command(Path(cell.run_dir))[2:]) == 0
    assert sweep_cli.main(["run", path]) == 0
    data = json.loads((Path(cell.run_dir) / "results.json").read_text())
    assert sorted(r["column"] for r in data["records"] if r["n_samples"] <= 6) == ["aa-rand@16", "apgd-t-2@16"]
    log = next((tmp_path / "out" / ".sweep").rglob("*.log")).read_text()
    assert log.count("evaluate.py") == 1 and "--attack apgd-t aa-rand" in log
    (audit,) = data["audit"]
    assert [c["name"] for c in audit["checks"]] == ["determinism", "convergence", "black_box"]
    assert audit["settings"]["square_queries"] == 20 and audit["n_samples"] == 6
    capsys.readouterr()
    assert sweep_cli.main(["run", path]) == 0 and "this call: 1 skipped" in capsys.readouterr().out
    assert sweep_cli.main(["report", path, "--columns", "aa-rand@16", "apgd-t-2@16"]) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| Method"))
    assert "aa-rand@16" in header and "apgd-t-2@16" in header


def test_the_router_study_sweep_expands_to_its_cells():
    cells = expand(load_sweep(str(Path(__file__).resolve().parents[1] / "configs/sweeps/ampt-router-study.yaml")))
    methods = ["APT-1x16", "APT-1x16-lr0.0005", "AMPT-4x4-uniform", "AMPT-4x4-router", "AMPT-2x8-router",
               "AMPT-8x2-router"]
    assert sorted({c.method for c in cells}) == sorted(methods)
    assert sorted((c.method, c.spec.seed) for c in cells) == sorted((m, s) for m in methods for s in (1, 2, 3))
    assert len({c.run_dir for c in cells}) == 18
    nodes = {c.method: c.spec.config_node().TRAINER.AMPT for c in cells}
    assert all(n.N_PROMPTS * n.N_CTX == 16 for n in nodes.values())
    assert nodes["AMPT-4x4-uniform"].ROUTER == "uniform" and nodes["AMPT-4x4-router"].ROUTER_INPUT_SCALE == 10.0
    assert [e["attack"] for e in cells[0].evaluate] == ["clean", "pgd", "pgd", "pgd", "cw", "aa", "pgd"]


def test_the_method_level_of_a_run_folder_is_the_trainers_declared_tag():
    from ampt.sweep.runspec import RunSpec, trainer_class

    ampt = RunSpec("AMPT", "configs/datasets/digits.yaml", "configs/trainers/AMPT/digits.yaml", 1,
                   ("TRAINER.AMPT.N_PROMPTS", "2", "OPTIM.LR", "0.01"))
    folder = ampt.run_dir("out")
    assert folder.parts[5] == trainer_class("AMPT").run_folder_tag(ampt.config_node())
    assert folder.parts[5].startswith("k2_l4_linear_") and folder.parent.name == "OPTIM.LR-0.01"  # declared: not extra
    apt = RunSpec("APT", "configs/datasets/digits.yaml", "configs/trainers/APT/digits.yaml", 1,
                  ("TRAINER.APT.N_CTX", "8"))
    assert apt.run_dir("out").parts[5] == "nctx8_cscFalse_ctpend"  # CoOp's scripts' name
    fap = RunSpec("FAP", "configs/datasets/digits.yaml", "configs/trainers/FAP/digits.yaml", 1,
                  ("TRAINER.FAP.N_CTX", "3"))  # FAP declares no folder keys: its overrides are the extra level
    assert trainer_class("FAP").run_folder_keys == () and fap.run_dir("out").parent.name == "TRAINER.FAP.N_CTX-3"


@pytest.mark.parametrize("change, message", [
    ({"retries": -1}, "retries: -1 is not a whole number >= 0"),
    ({"retries": "abc"}, "retries: 'abc' is not a whole number >= 0"),
    ({"retry_delay_s": -2}, "retry_delay_s: -2 is not a number >= 0"),
    ({"epochs": "four"}, "epochs: 'four' is not a whole number >= 1 or by_shots"),
    ({"executor": {"name": "local", "wrokers": 2}}, 'Did you mean "workers"?'),
    ({"executor": {"name": "local", "workers": 0}}, "executor workers: 0 is not a whole number >= 1"),
    ({"grid": {"dataset": ["digits"], "seed": []}}, "0 cells: the grid has no points"),
])
def test_bad_sweep_values_are_one_line_even_on_a_dry_run(tmp_path, assets, capsys, change, message):
    root, backbone = assets
    path = write_sweep(tmp_path / "s.yaml", **{**base_sweep(root, tmp_path / "out", backbone), **change})
    for argv in (["run", path, "--dry-run"], ["run", path]):
        assert sweep_cli.cli(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and message in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_malformed_sweep_yaml_names_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmethods: {CoOp: [\n")
    assert sweep_cli.cli(["run", str(path), "--dry-run"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: not valid YAML (line 3, column 1)"), lines


def test_run_folder_levels_fit_the_file_system_limit_and_stay_distinct():
    from ampt.sweep.layout import fit_component
    from ampt.sweep.runspec import RunSpec

    opts = ("OPTIM.LR", "0.001", "OPTIM.WEIGHT_DECAY", "0.0001", "OPTIM.MOMENTUM", "0.8", "OPTIM.WARMUP_CONS_LR",
            "0.00002", "TRAINER.COOP.CTX_INIT")
    folders = [RunSpec("CoOp", "configs/datasets/digits.yaml", "configs/trainers/CoOp/digits.yaml", 1,
                       opts + (value,)).run_dir("out") for value in ("a " * 150, "b " * 150)]
    for folder in folders:  # one level would be 340 bytes
        assert all(len(part.encode()) <= 255 for part in folder.parts)
        assert folder.parent.name.startswith("OPTIM.LR-0.001_OPTIM.WEIGHT_DECAY") and "~" in folder.parent.name
    assert folders[0] != folders[1]
    assert fit_component("short") == "short"
    assert len(fit_component("é" * 200).encode()) <= 255  # multi-byte characters are not cut in half


def test_the_layout_command_prints_a_folder_per_seed_and_refuses_a_bad_seed_in_one_line(capsys):
    """What the shell scripts call once for all their seeds: the folders equal the sweep runner's."""
    from ampt.sweep import layout
    from ampt.sweep.runspec import RunSpec

    args = ["--output", "out", "--trainer", "CoOp", "--dataset-config-file", "configs/datasets/digits.yaml",
            "--config-file", "configs/trainers/CoOp/digits.yaml", "TRAINER.COOP.N_CTX", "8"]
    assert layout.main(["--seed", "3 1", *args]) == 0
    expected = [str(RunSpec("CoOp", "configs/datasets/digits.yaml", "configs/trainers/CoOp/digits.yaml", seed,
                            ("TRAINER.COOP.N_CTX", "8")).run_dir("out")) for seed in (3, 1)]
    assert capsys.readouterr().out.splitlines() == expected
    with pytest.raises(SystemExit) as exit_info:
        layout.main(["--seed", "1 x", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "--seed '1 x': whole numbers" in err


def test_the_mixtures_sweep_compares_16_learned_tokens():
    cells = expand(load_sweep(str(REPO / "configs/sweeps/mixtures-digits.yaml")))
    assert len(cells) == 24 and len({c.run_dir for c in cells}) == 24

    def tokens(cell) -> int:
        cfg = cell.spec.config_node()
        if cell.spec.trainer == "AMPT":
            return cfg.TRAINER.AMPT.N_PROMPTS * cfg.TRAINER.AMPT.N_CTX
        if cell.spec.trainer == "MoEAdvVLP":
            node = cfg.TRAINER.MOEADVVLP
            text = node.N_CTX_TEXT * (1 + node.N_EXPERTS * (node.PROMPT_DEPTH_TEXT - 1)) if node.PROMPT_DEPTH_TEXT else 0
            gated_vision = node.N_CTX_VISION * node.N_EXPERTS * (node.PROMPT_DEPTH_VISION - 1)
            coupled = node.COUPLING == "maple"  # block-0 image tokens are a projection of the text tokens
            return text + gated_vision + (0 if coupled else node.N_CTX_VISION)
        return cfg.TRAINER.get(cell.spec.trainer.upper()).N_CTX

    budget = {c.method: tokens(c) for c in cells if c.method != "FAP"}
    assert budget == {"APT-16": 16, "AMPT-4x4-router": 16, "AMPT-4x4-uniform": 16, "DEFEAT-16": 16, "MoE-VLP": 16,
                      "MoE-visual": 16, "MoE-MaPLe": 14}
    assert [(e["attack"], e.get("eps")) for e in cells[0].evaluate] == [("clean", None), ("pgd", 4), ("pgd", 8),
                                                                        ("aa", 4)]
