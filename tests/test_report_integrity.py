"""ampt.report never shows a number it silently chose: alpha and attack-seed variants, eval-only folders,
duplicate runs, stale records and unreadable files are separated or flagged in every format; the CLI's
``--plots`` and Ctrl-C give one line."""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

import pytest

from ampt.report import build_report, load_report
from ampt.report.__main__ import cli
from ampt.report.tables import latex_escape

FORMATS = ("markdown", "csv", "latex", "json")


def record(attack, eps, steps, accuracy, **extra):
    return {"dataset": "EuroSAT", "split": "test", "attack": attack, "eps": eps, "steps": steps, "n_samples": 100,
            "accuracy": accuracy, "prompt": "learned", **extra}


def clean(accuracy, **extra):
    return record("clean", 0, 0, accuracy, **extra)


def write_run(folder: Path, seed, records, trainer="APT", **run):
    folder.mkdir(parents=True, exist_ok=True)
    block = {"trainer": trainer, "dataset": "EuroSAT", "shots": 4, "seed": seed, "train_eps": 4, "finished": True,
             **run}
    (folder / "results.json").write_text(json.dumps({"run": block, "records": records}))
    return folder


def row_of(report, method):
    return next(r for r in report.rows if r.method == method)


def every_format(root) -> dict:
    return {fmt: build_report([root], fmt=fmt) for fmt in FORMATS}


def shown(path: Path, fmt: str) -> str:
    """A path as the format writes it."""
    return latex_escape(str(path)) if fmt == "latex" else str(path)


def test_a_non_default_alpha_is_its_own_column(tmp_path):
    write_run(tmp_path / "seed1", 1, [clean(80.0), record("pgd", 4, 100, 40.0, alpha=1.0),
                                      record("pgd", 4, 100, 30.0, alpha=2.0)])  # written last: used to win
    report = load_report([tmp_path])
    row = row_of(report, "APT")
    assert row.get("pgd-100@4").values == [40.0]
    assert row.get("pgd-100@4 [alpha 2]").values == [30.0]
    assert report.hm_attack == "pgd-100@4"
    assert "pgd-100@4 [alpha 2]" in build_report([tmp_path])


def test_records_differing_in_the_attack_seed_count_the_lowest_and_say_so(tmp_path):
    write_run(tmp_path / "seed1", 1, [clean(80.0), record("pgd", 4, 100, 40.0, seed=0),
                                      record("pgd", 4, 100, 35.0, seed=3)])  # written last: used to win
    report = load_report([tmp_path])
    assert row_of(report, "APT").get("pgd-100@4").values == [40.0]
    for fmt, text in every_format(tmp_path).items():
        assert "pgd-100@4: 2 records on 100 images, counted attack seed 0" in text, fmt


def test_an_eval_only_folder_is_its_own_row_labelled_with_its_epoch(tmp_path):
    trained = write_run(tmp_path / "apt" / "seed1", 1, [clean(80.0, weights="F1", checkpoint_epoch=10)],
                        final_weights="F1")
    write_run(tmp_path / "apt" / "seed2", 2, [clean(82.0)])
    loaded = {"weights": "E2", "checkpoint_epoch": 2, "model_dir": str(trained.resolve())}
    write_run(tmp_path / "apt" / "a-epoch2", 1, [clean(50.0, **loaded)],  # sorts before seed1: used to replace it
              eval_only=True, model_dir=str(trained), load_epoch=2)
    write_run(tmp_path / "zs" / "seed1", 1, [clean(60.0, prompt="a photo of a {}.")], trainer="ZeroshotCLIP",
              train_eps=0, eval_only=True, model_dir="", load_epoch=None)
    report = load_report([tmp_path])
    apt = row_of(report, "APT")
    assert apt.get("clean").values == [80.0, 82.0] and not apt.flags
    epoch2 = row_of(report, "APT (eval-only, epoch 2)")
    assert epoch2.get("clean").values == [50.0] and epoch2.seeds == [1] and not epoch2.missing
    assert row_of(report, "ZeroshotCLIP").get("clean").values == [60.0]  # the zero-shot model itself: a normal row
    assert "APT (eval-only, epoch 2)" in build_report([tmp_path])


def test_a_duplicate_run_is_a_flag_in_every_format(tmp_path):
    write_run(tmp_path / "a" / "seed1", 1, [clean(80.0)])
    write_run(tmp_path / "b" / "seed1", 1, [clean(70.0)])
    assert row_of(load_report([tmp_path]), "APT").get("clean").values == [80.0]
    for fmt, text in every_format(tmp_path).items():
        assert "seed 1 twice" in text and shown(tmp_path / "b" / "seed1", fmt) in text, fmt


def test_a_stale_record_is_left_out_and_flagged(tmp_path):
    write_run(tmp_path / "seed1", 1, [clean(80.0, weights="F", checkpoint_epoch=10),
                                      record("pgd", 4, 100, 60.0, weights="E2", checkpoint_epoch=2)],
              final_weights="F")
    write_run(tmp_path / "seed2", 2, [clean(82.0), record("pgd", 4, 100, 41.0)])  # no digest: counts as before
    report = load_report([tmp_path])
    row = row_of(report, "APT")
    assert row.get("clean").values == [80.0, 82.0] and row.get("pgd-100@4").values == [41.0]
    for fmt, text in every_format(tmp_path).items():
        assert "seed 1: stale record of epoch 2 left out (pgd-100@4)" in text, fmt


def test_an_unreadable_results_file_is_named_in_every_format(tmp_path):
    write_run(tmp_path / "seed1", 1, [clean(80.0)])
    broken = tmp_path / "seed2" / "results.json"
    broken.parent.mkdir()
    broken.write_text('{"run": {"trainer": "APT"')
    assert [r.seed for r in load_report([tmp_path]).runs] == [1]
    for fmt, text in every_format(tmp_path).items():
        assert "skipped" in text.lower() and "unreadable run" in text and shown(broken, fmt) in text, fmt
        assert "not valid JSON" in text, fmt
    lines = list(csv.DictReader(io.StringIO(build_report([tmp_path], fmt="csv"))))
    assert any(line["table"] == "skipped" for line in lines)
    assert json.loads(build_report([tmp_path], fmt="json"))["skipped"][0]["path"] == str(broken)


def _read_only_folder(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder / "figures"
    if Path("/sys").is_dir():  # root writes anywhere but under /sys
        return Path("/sys/ampt-report-figures")
    pytest.skip("no folder this user cannot write to")


def test_plots_onto_a_file_or_a_read_only_folder_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    write_run(tmp_path / "runs" / "seed1", 1, [clean(80.0)])
    a_file = tmp_path / "figures.png"
    a_file.write_text("")
    for target in (a_file, _read_only_folder(tmp_path)):
        monkeypatch.setattr(sys, "argv", ["ampt.report", str(tmp_path / "runs"), "--plots", str(target)])
        assert cli() == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and err.startswith(f"error: --plots {target}"), err


def test_ctrl_c_during_a_report_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    write_run(tmp_path / "seed1", 1, [clean(80.0)])
    monkeypatch.setattr("ampt.report.load_report", interrupted)
    monkeypatch.setattr(sys, "argv", ["ampt.report", str(tmp_path)])
    assert cli() == 130
    assert capsys.readouterr().err == "interrupted (Ctrl-C)\n"


def test_output_onto_a_folder_is_one_line(tmp_path, capsys, monkeypatch):
    write_run(tmp_path / "runs" / "seed1", 1, [clean(80.0)])
    monkeypatch.setattr(sys, "argv", ["ampt.report", str(tmp_path / "runs"), "--output", str(tmp_path)])
    assert cli() == 2
    assert capsys.readouterr().err.startswith(f"error: --output {tmp_path}: cannot write it")
