"""Sweeps under faults: stale or clamped records, Ctrl-C, a run finished by another train.py, a held run
lock, a corrupt results.json.

Cells are built from a sweep file without data (nothing validates the data root); their steps are
replaced by tiny ``python -c`` commands, except the Ctrl-C test, which stops a real ``python -m ampt.sweep
run`` and its ``train.py``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ampt.sweep import __main__ as sweep_cli
from ampt.sweep.cell import FAILED, missing_evaluations, run_cell
from ampt.sweep.expand import expand
from ampt.sweep.runspec import RunSpec
from ampt.sweep.spec import load_sweep
from ampt.sweep.state import CellState
from ampt.sweep.status import cell_state
from ampt.utils.locks import RUN_LOCK_FILE, acquire_run_lock, release_run_lock

REPO = Path(__file__).resolve().parents[1]
FINISH_RUN = ("import json, pathlib, sys; d = pathlib.Path(sys.argv[1]); d.mkdir(parents=True, exist_ok=True); "
              "(d / 'results.json').write_text(json.dumps({'run': {'finished': True}, 'records': []}))")


def write_sweep(path: Path, **content) -> str:
    path.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
    return str(path)


def sweep_file(tmp_path: Path, seeds=(1,), evaluate=(), retries=0) -> str:
    """A CoOp sweep on Digits; its data root and backbone need not exist until a real train.py runs."""
    return write_sweep(tmp_path / "s.yaml", name="t", data_root=str(tmp_path / "data"),
                       output_root=str(tmp_path / "out"), backbone=str(tmp_path / "tiny.pt"),
                       grid={"dataset": ["digits"], "shots": [1], "seed": list(seeds)},
                       methods={"CoOp": {"trainer": "CoOp", "config": "configs/trainers/CoOp/digits.yaml",
                                         "opts": ["OPTIM.MAX_EPOCH", 50]}},
                       evaluate=list(evaluate), executor={"name": "local", "workers": 1, "threads": 1},
                       retries=retries)


def write_results(run_dir: str, records, **run) -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "results.json").write_text(json.dumps({"run": run, "records": list(records)}))


def fake_train(monkeypatch, script: str) -> None:
    """Every cell's train.py becomes ``python -c script RUN_DIR``."""
    monkeypatch.setattr(RunSpec, "train_command", lambda self, run_dir: [sys.executable, "-c", script, str(run_dir)])


def clean(n: int, **fields) -> dict:
    return {"dataset": "Digits", "split": "test", "attack": "clean", "eps": 0, "steps": 0, "n_samples": n,
            "accuracy": 50.0, "prompt": "learned", "precision": "fp32", **fields}


def pgd(n: int, **fields) -> dict:
    return {**clean(n), "attack": "pgd", "eps": 1, "steps": 1, "alpha": 0.25, "seed": 0, **fields}


# ------------------------------------------------------------------ which records answer an entry
def test_a_record_of_an_intermediate_checkpoint_answers_no_entry(tmp_path):
    (cell,) = expand(load_sweep(sweep_file(tmp_path, evaluate=[{"attack": "clean"}])))
    write_results(cell.run_dir, [clean(30, weights="epoch5")], finished=True, final_weights="final")
    assert missing_evaluations(cell) == [{"attack": "clean"}]  # recomputed on the final model
    for record, run in ((clean(30, weights="final"), {"final_weights": "final"}),
                        (clean(30), {"final_weights": "final"}),  # a record without weights: as before
                        (clean(30, weights="epoch5"), {})):  # a run without final_weights: as before
        write_results(cell.run_dir, [record], finished=True, **run)
        assert missing_evaluations(cell) == []


def test_n_samples_above_the_split_and_a_seedless_clean_record_answer_their_entries(tmp_path):
    """evaluate.py clamps n_samples to the split (recording the split's size) and skips the trainer's clean
    test, which has no seed: such entries are answered, so the cell gets done."""
    entries = [{"attack": "clean", "n_samples": 100}, {"attack": "clean", "seed": 0}, {"attack": "clean"},
               {"attack": "pgd", "eps": 1, "steps": 1, "n_samples": 100},
               {"attack": "pgd", "eps": 1, "steps": 1, "n_samples": 20}]
    (cell,) = expand(load_sweep(sweep_file(tmp_path, evaluate=entries)))
    trainer_clean = clean(30)  # the trainer's own test: whole split, no seed, no image digest
    whole_pgd = pgd(30, images_sha256="a" * 64)  # evaluate.py on the whole split: no image_list_file
    subset_pgd = pgd(20, images_sha256="b" * 64, image_list_file="image_lists/Digits-test-n20-seed0.txt")
    write_results(cell.run_dir, [trainer_clean, whole_pgd, subset_pgd], finished=True)
    assert missing_evaluations(cell) == []
    assert cell_state(cell, str(tmp_path / "out")) == "done"

    write_results(cell.run_dir, [trainer_clean, subset_pgd], finished=True)
    assert missing_evaluations(cell) == [entries[3]]  # 20 of the 30 images do not answer 100
    write_results(cell.run_dir, [subset_pgd], finished=True)  # the split's size unknown: n_samples as given
    assert missing_evaluations(cell) == entries[:4]


def test_run_reports_a_cell_failed_when_its_evaluations_leave_an_entry_unanswered(tmp_path, monkeypatch, capsys):
    path = sweep_file(tmp_path, evaluate=[{"attack": "clean", "n_samples": 7}])
    (cell,) = expand(load_sweep(path))
    write_results(cell.run_dir, [], finished=True)
    monkeypatch.setattr("ampt.sweep.cell.evaluate_command", lambda cell, entry: [sys.executable, "-c", ""])
    assert sweep_cli.main(["run", path]) == 1
    out = capsys.readouterr().out
    assert "this call: 1 failed" in out and "|      0 |         0 |        1 |" in out  # the table agrees
    assert "does not answer the evaluate entry {'attack': 'clean', 'n_samples': 7}" in out


# ------------------------------------------------------------------ other processes, broken files
def test_a_run_finished_by_another_train_py_meanwhile_is_done(tmp_path, monkeypatch, capsys):
    """The user's own train.py finishes the run while the sweep's starts: ours refuses the finished folder."""
    path = sweep_file(tmp_path)
    fake_train(monkeypatch, FINISH_RUN + "; print('error: results.json says this run finished'); sys.exit(2)")
    assert sweep_cli.main(["run", path]) == 0
    assert "this call: 1 done" in capsys.readouterr().out
    (cell,) = expand(load_sweep(path))
    assert CellState(str(tmp_path / "out"), cell.run_dir).read()["state"] == "done"


def test_status_shows_a_cell_whose_run_lock_is_held_as_running(tmp_path, capsys):
    """A train.py outside the runner (the user's, or one a runner killed with -9 left behind) holds the run."""
    path = sweep_file(tmp_path)
    (cell,) = expand(load_sweep(path))
    out = str(tmp_path / "out")
    acquire_run_lock(cell.run_dir)
    try:
        assert cell_state(cell, out) == "running"
    finally:
        release_run_lock(cell.run_dir)
    assert cell_state(cell, out) == "pending"
    (Path(cell.run_dir) / RUN_LOCK_FILE).write_text('{"pid": 1, "host": "h"}')  # its holder was killed
    assert cell_state(cell, out) == "pending"


def test_a_corrupt_results_json_fails_its_cell_only(tmp_path, monkeypatch, capsys):
    path = sweep_file(tmp_path, seeds=[1, 2])
    broken, other = expand(load_sweep(path))
    Path(broken.run_dir).mkdir(parents=True)
    (Path(broken.run_dir) / "results.json").write_text("{not json")
    assert sweep_cli.main(["status", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "|      0 |         0 |        1 |         1 |" in lines[2]
    assert lines[-1].startswith(f"failed: {broken.name} (") and "is not valid JSON" in lines[-1]

    fake_train(monkeypatch, FINISH_RUN)
    assert sweep_cli.main(["run", path]) == 1
    assert "this call: 1 failed, 1 done" in capsys.readouterr().out
    assert run_cell(other, str(tmp_path / "out")) == "skipped"
    assert "not valid JSON" in CellState(str(tmp_path / "out"), broken.run_dir).read()["error"]
    assert run_cell(broken, str(tmp_path / "out")) == FAILED


# ------------------------------------------------------------------ Ctrl-C
def _processes_mentioning(text: str) -> list:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(cmdline.parent.name)
        except OSError:
            pass
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="looks for the children in /proc")
def test_ctrl_c_stops_the_runner_and_its_train_py_and_leaves_the_cell_resumable(tmp_path):
    path = sweep_file(tmp_path, retries=2)
    (cell,) = expand(load_sweep(path))
    out = tmp_path / "out"
    runner = subprocess.Popen([sys.executable, "-m", "ampt.sweep", "run", path], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = CellState(str(out), cell.run_dir).log_path
    deadline = time.time() + 60
    while not (log.exists() and "train.py" in log.read_text()) and time.time() < deadline:
        time.sleep(0.02)  # train.py has started (its imports alone take seconds)
    runner.send_signal(signal.SIGINT)
    time.sleep(0.2)
    runner.send_signal(signal.SIGINT)  # an impatient second Ctrl-C
    stdout, stderr = runner.communicate(timeout=60)
    assert runner.returncode == 130, stderr
    assert "Traceback" not in stderr
    own_lines = [line for line in stderr.splitlines() if " ampt.sweep." not in line]  # not the log's lines
    assert len(own_lines) == 1 and own_lines[0].startswith("interrupted: "), stderr
    state = CellState(str(out), cell.run_dir).read()
    assert state["state"] == "pending" and state["attempt"] == 0  # resumable, no attempt spent
    assert _processes_mentioning(str(out)) == []  # its train.py is gone too
    assert stdout == ""
