"""The sweep runner end to end on tiny runs: the local pool beside the shell scripts on one output folder,
and submitit's local executor (requeue). In a file of their own so that the test workers share the load."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from ampt.results import RunResults
from ampt.sweep import __main__ as sweep_cli
from ampt.sweep.executors import CellTask, RunOptions
from ampt.sweep.expand import expand
from ampt.sweep.spec import load_sweep
from ampt.sweep.state import CellState
from test_sweep import REPO, _fix_when_failed, base_sweep, write_sweep
from test_sweep import assets  # noqa: F401  (a fixture the tests take)


def test_local_sweep_retries_skips_and_shares_run_folders_with_the_shell_scripts(tmp_path, assets, capsys):
    """One output folder, in the order a user may mix them: scripts/coop/main.sh trains seed 2; the local
    sweep (2 workers) finds that run, trains the rest, retries a failed cell, evaluates every cell and skips
    everything on a second call; the script then finds the sweep's runs and skips both."""
    root, backbone = assets
    out = tmp_path / "out"
    env = {**os.environ, "DATA": str(root), "SEEDS": "2", "EPOCHS": "1", "BACKBONE": str(backbone),
           "OUTPUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    script = [str(REPO / "scripts" / "coop" / "main.sh"), "digits", "digits", "end", "4", "1", "False"]
    subprocess.run(["bash", *script], env=env, check=True, capture_output=True, text=True)
    from ampt.sweep.status import cell_state

    plain = base_sweep(root, out, backbone)  # CoOp's cells only, nothing to evaluate: the script's folders
    plain["methods"]["CoOp"]["opts"] = ["OPTIM.MAX_EPOCH", 1]
    plain["grid"]["seed"] = [1, 2]
    coop_cells = expand(load_sweep(write_sweep(tmp_path / "plain.yaml", **plain)))
    assert [cell_state(c, str(out)) for c in coop_cells] == ["pending", "done"]  # the script's seed-2 run

    late = tmp_path / "late.pt"  # missing at the start: ZeroshotCLIP's first attempts fail
    spec = {**plain, "retries": 2, "retry_delay_s": 1.5,
            "evaluate": [{"attack": "clean"}, {"attack": "pgd", "eps": 1, "steps": 1, "n_samples": 20}]}
    zs = {"trainer": "ZeroshotCLIP", "config": "configs/trainers/ZeroshotCLIP/digits.yaml",
          "backbone": str(late), "grid": {"seed": [1]}}
    spec["methods"] = {"ZS": zs, **plain["methods"]}  # first, so it fails while the others run
    path = write_sweep(tmp_path / "s.yaml", **spec)
    seen: list = []
    stop = threading.Event()
    fixer = threading.Thread(target=_fix_when_failed, args=(out, late, backbone, seen, stop))
    fixer.start()
    try:
        assert sweep_cli.main(["run", path, "--workers", "2"]) == 0  # trains ZS and CoOp seed 1; evaluates all 3
    finally:
        stop.set()
        fixer.join()
    text = capsys.readouterr().out
    assert "this call: 3 done" in text
    assert seen and seen[0]["error"] == "train.py exited with status 2" and "late.pt" in seen[0]["error_tail"]
    cells = expand(load_sweep(path))
    assert [c.run_dir for c in cells if c.method == "CoOp"] == [c.run_dir for c in coop_cells]
    states = {c.name: CellState(str(out), c.run_dir).read() for c in cells}
    assert {s["state"] for s in states.values()} == {"done"}
    assert [s["attempt"] for n, s in states.items() if n.startswith("ZS")] == [2]  # retried once
    assert {s["attempt"] for n, s in states.items() if n.startswith("CoOp")} == {1}
    for cell in cells:
        results = json.loads((Path(cell.run_dir) / "results.json").read_text())
        assert any(r["attack"] == "pgd" and r["n_samples"] == 20 and r["eps"] == 1 for r in results["records"])
        assert results["run"]["method"] == cell.method  # the report's label
    zs = next(c for c in cells if c.method == "ZS")
    RunResults(zs.run_dir).set_run(method=None)  # as a run of an older sweep runner left it
    capsys.readouterr()
    assert sweep_cli.main(["report", path]) == 0
    assert "| ZS " in capsys.readouterr().out  # the sweep's label, not the trainer's name ZeroshotCLIP

    assert sweep_cli.main(["run", path]) == 0  # everything finished: nothing runs
    assert "this call: 3 skipped" in capsys.readouterr().out
    assert RunResults(zs.run_dir).run["method"] == "ZS"  # a skipped cell is labelled too
    assert sweep_cli.main(["status", path]) == 0
    status = capsys.readouterr().out
    assert "| ZS       | digits    |      1 |         0 |        0 |         0 |       1 |" in status
    assert "| CoOp     | digits    |      2 |" in status

    again = subprocess.run(["bash", *script], env={**env, "SEEDS": "1 2"}, check=True, capture_output=True,
                           text=True).stdout
    for cell in coop_cells:  # the script skips both, in the sweep's folders
        assert f"Finished run at {cell.run_dir} (skipped" in again


def test_submitit_local_executor_runs_a_cell_and_requeues_the_same_cell(tmp_path, assets, capsys):
    root, backbone = assets
    spec = base_sweep(root, tmp_path / "out", backbone,
                      executor={"name": "slurm", "cluster": "local", "timeout_min": 10, "gpus_per_task": 0})
    spec["grid"]["seed"] = [1]
    spec["methods"] = {"ZS": {"trainer": "ZeroshotCLIP", "config": "configs/trainers/ZeroshotCLIP/digits.yaml"}}
    path = write_sweep(tmp_path / "s.yaml", **spec)
    assert sweep_cli.main(["run", path]) == 0
    assert "this call: 1 done" in capsys.readouterr().out
    (cell,) = expand(load_sweep(path))
    assert json.loads((Path(cell.run_dir) / "results.json").read_text())["run"]["finished"] is True
    assert list((tmp_path / "out" / ".sweep" / "submitit").glob("*/*_result.pkl"))  # submitit ran it
    task = CellTask(RunOptions(str(tmp_path / "out")))
    again = task.checkpoint(cell)  # what SLURM's requeue submits: the same task and cell
    assert again.function is task and again.args == (cell,)
    assert again.result() == "skipped"  # the cell finished: the requeued task skips it
