"""Errors caused by the user's input are one line on stderr with exit status 2; bugs keep their traceback.

The command-line tools are run as the user runs them (subprocesses), on
mistakes that fail before any data or backbone is read, so each takes the
time of an import. Also: the classes short of the shots asked are logged.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from ampt.data.dataset_base import DatasetBase
from ampt.data.datum import Datum
from ampt.errors import UserError
from ampt.utils.cli import run_cli

REPO = Path(__file__).resolve().parent.parent
COOP_DIGITS = "configs/trainers/CoOp/digits.yaml"


def run_tool(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AMPT_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)


def train_argv(tmp_path: Path, *extra: str) -> List[str]:
    return ["train.py", "--root", str(tmp_path / "data"), "--trainer", "CoOp", "--config-file", COOP_DIGITS,
            "--output-dir", str(tmp_path / "run"), *extra]


def test_train_py_user_error_is_one_line_exit_2(tmp_path):
    """As the user runs it: a bad config value gives one line on stderr, exit 2, no traceback."""
    result = run_tool(*train_argv(tmp_path, "OPTIM.LR", "abc"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and re.match(r"error: Type mismatch .* OPTIM\.LR", lines[0]), lines
    assert not (tmp_path / "run").exists()


def run_train_cli(monkeypatch, capsys, argv: List[str]):
    import train

    monkeypatch.setattr(sys, "argv", argv)
    code = train.cli()
    return code, capsys.readouterr().err


def test_malformed_override_list_and_yaml_are_one_line(tmp_path, monkeypatch, capsys):
    code, err = run_train_cli(monkeypatch, capsys, train_argv(tmp_path, "OPTIM.LR"))
    assert code == 2 and err.count("\n") == 1 and "KEY VALUE pairs" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("OPTIM: [unclosed\n", encoding="utf-8")
    code, err = run_train_cli(monkeypatch, capsys, ["train.py", "--trainer", "CoOp", "--config-file", str(bad)])
    assert code == 2 and err.count("\n") == 1 and f"error: {bad} is not valid YAML" in err


def test_debug_flag_shows_the_traceback(tmp_path, monkeypatch, capsys):
    for argv in (train_argv(tmp_path, "--debug", "OPTIM.LR", "abc"), train_argv(tmp_path, "OPTIM.LR", "abc", "--debug")):
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(UserError, match="Type mismatch"):
            __import__("train").cli()


def test_argparse_errors_are_one_line(monkeypatch, capsys):
    import evaluate

    monkeypatch.setattr(sys, "argv", ["evaluate.py", "--steps", "many"])
    with pytest.raises(SystemExit) as exit_info:
        evaluate.cli()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ")


def test_run_cli_keeps_tracebacks_for_bugs(capsys):
    def user_mistake() -> int:
        raise UserError("OPTIM.LR must be > 0\n(got -1)")

    def bug() -> int:
        raise ValueError("an internal shape check failed")

    assert run_cli(user_mistake, argv=[]) == 2
    assert capsys.readouterr().err == "error: OPTIM.LR must be > 0 (got -1)\n"  # one line
    with pytest.raises(ValueError, match="internal"):
        run_cli(bug, argv=[])
    with pytest.raises(UserError):
        run_cli(user_mistake, argv=["--debug"])


def test_classes_short_of_the_shots_are_logged(tmp_path, caplog):
    items = [Datum(str(tmp_path / f"{c}{i}.png"), label, classname=c)
             for label, (c, n) in enumerate([("cat", 6), ("dog", 2), ("owl", 3)]) for i in range(n)]
    with caplog.at_level(logging.WARNING, logger="ampt.data.fewshot"):
        subset = DatasetBase(train_x=items).generate_fewshot_dataset(items, num_shots=4)
    assert len(subset) == 4 + 2 + 3
    assert "2 class(es) have fewer images than the shots asked" in caplog.text
    assert "dog (2), owl (3)" in caplog.text and "cat" not in caplog.text


def test_setting_checks_of_later_modules_are_user_errors():
    """Bad PREC / --precision / CHUNK_SIZE values are user errors (one line), not bugs (traceback)."""
    import torch

    from ampt.models.text_encoder import TextPassOptions
    from ampt.precision import check_eval_precision, resolve_train_precision

    with pytest.raises(UserError, match="bf17"):
        resolve_train_precision("bf17", torch.device("cpu"))
    with pytest.raises(UserError, match="bf17"):
        check_eval_precision("bf17")
    with pytest.raises(UserError, match="CHUNK_SIZE"):
        TextPassOptions(shared_prefix=True, checkpoint=False, chunk_rows=-1)


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    from ampt.utils.cli import run_cli

    def interrupted() -> int:
        raise KeyboardInterrupt

    assert run_cli(interrupted, argv=[]) == 130
    assert capsys.readouterr().err == "interrupted (Ctrl-C)\n"
    with pytest.raises(KeyboardInterrupt):
        run_cli(interrupted, argv=["--debug"])


WRITE_UNDER_A_FILE_SIZE_LIMIT = r"""
import resource, signal, sys, logging
from ampt.utils.cli import run_cli
from ampt.utils.io import write_json
from ampt.utils.logger import setup_logger
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
folder = sys.argv[2]

def record():
    write_json({"run": {}, "records": []}, folder + "/results.json")
    write_json({"records": ["x" * 100] * 100}, folder + "/results.json")  # 10 kB: past the limit
    return 0

def log():
    setup_logger(folder)
    for step in range(1000):
        logging.getLogger("ampt.train").info("epoch 1 batch %d loss 0.123456789", step)
    return 0

codes = [run_cli(record, argv=[]), run_cli(log, argv=[])]
sys.exit(0 if codes == [2, 2] else 1)
"""


def test_a_write_past_a_file_size_limit_is_one_line_and_keeps_the_previous_file(tmp_path):
    """A record or a log line that cannot be written (full disk, quota, ulimit -f) stops the command in one line."""
    import json
    import re
    import subprocess

    proc = subprocess.run([sys.executable, "-c", WRITE_UNDER_A_FILE_SIZE_LIMIT, "-", str(tmp_path)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in proc.stderr and len(errors) == 2, proc.stderr
    assert re.fullmatch(r"error: cannot write .*results.json: File too large; the file-size limit \(ulimit -f\) "
                        r"is too low for it: raise it .*", errors[0])
    assert re.fullmatch(r"error: cannot write .*log.txt: File too large; the file-size limit .*", errors[1])
    # the first, small results.json is intact and no temporary file is left
    assert json.loads((tmp_path / "results.json").read_text()) == {"run": {}, "records": []}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.txt", "results.json"]


def test_an_output_dir_name_over_the_file_system_limit_is_one_line(tmp_path):
    import train

    with pytest.raises(UserError, match=r"--output-dir: the name x{40}\.\.\. is 300 bytes; file systems allow 255"):
        train.main(["--root", str(tmp_path), "--trainer", "CoOp", "--config-file",
                    "configs/trainers/CoOp/digits.yaml", "--output-dir", str(tmp_path / ("x" * 300) / "run")])
    assert list(tmp_path.iterdir()) == []
