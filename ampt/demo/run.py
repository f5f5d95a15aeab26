"""The embedded demo: tiny robust CLIP on Digits, each method run by ``train.py``.

``python -m ampt.demo --root data --output-dir output/demo`` writes the
Digits dataset (once), pretrains the tiny CLIP (cached), runs every method
through the real ``train.py`` command line (the same path a user's GPU run
takes), and prints the report (:mod:`ampt.report`) of the runs' ``results.json``:
clean and PGD accuracy per method (mean ± sample std over seeds), also
written to ``<output-dir>/results.md`` and ``report.json``. A run whose
``results.json`` says it finished is not run again (``--force`` re-runs).
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Union

from ..config_paths import find_config
from ..report import Report, collect_runs, render
from ..report.methods import assign_methods
from ..report.model import make_report
from ..report.tables import report_dict
from ..results import RunResults
from ..utils.io import read_json, write_json
from .digits_data import prepare_digits
from .pretrain import pretrain_tiny_clip, sidecar_path

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASET_CONFIG = "digits"  # configs/datasets/<id>.yaml (ampt.config_paths)
DATASET_NAME = "Digits"
DEFAULT_METHODS = ("ZeroshotCLIP", "CoOp", "APT", "AMPT")
EVAL_EPS = 4.0  # robust test budget, in 1/255 units
EVAL_STEPS = 10  # PGD steps of the demo's robust test (step eps / 4)
SUMMARY_FILE = "report.json"  # not results.json: that name is a run's
PathLike = Union[str, Path]


def method_config(method: str) -> Path:
    """``configs/trainers/<method>/digits.yaml``, the repository's or a plug-in folder's (one-line error if none)."""
    return find_config("trainers", method, "digits")


def train_command(method: str, root: Path, run_dir: Path, seed: int, backbone: Path,
                  shots: int, force: bool = False, opts: Sequence[str] = ()) -> List[str]:
    """The ``train.py`` command line of one demo run (CoOp's script arguments)."""
    cmd = [
        sys.executable, str(REPO_ROOT / "train.py"),
        "--root", str(root), "--seed", str(seed), "--trainer", method,
        "--dataset-config-file", str(find_config("datasets", DATASET_CONFIG)),
        "--config-file", str(method_config(method)),
        "--output-dir", str(run_dir), *(["--force"] if force else []),
    ]
    return cmd + ["MODEL.BACKBONE.NAME", str(backbone), "DATASET.NUM_SHOTS", str(shots), *opts]


def evaluate_command(run_dir: Path, eps: float = EVAL_EPS, steps: int = EVAL_STEPS) -> List[str]:
    """``evaluate.py`` adding the PGD record (skipped when results.json holds it)."""
    return [sys.executable, str(REPO_ROOT / "evaluate.py"), str(run_dir), "--attack", "pgd",
            "--eps", f"{eps:g}", "--steps", str(steps)]


def _accuracy(run_dir: Path, attack: str, eps: float = 0.0, steps: int = 0) -> Optional[float]:
    """Accuracy of the latest test-split record of ``attack`` at ``eps``/``steps`` (clean: any)."""
    found = None
    for record in RunResults(run_dir).records:
        if record.get("split") != "test" or record.get("attack") != attack:
            continue
        if attack != "clean" and (float(record["eps"]) != eps or int(record["steps"]) != steps):
            continue
        found = float(record["accuracy"])
    return found


def robust_column(eps: float = EVAL_EPS, steps: int = EVAL_STEPS) -> str:
    """The report's name of the demo's robust number, e.g. "pgd-10@4"."""
    return f"pgd-{steps}@{eps:g}"


def demo_report(out_dir: Path, methods: Sequence[str], seeds: Sequence[int], eps: float = EVAL_EPS,
                steps: int = EVAL_STEPS) -> Report:
    """The report (:mod:`ampt.report`) of the demo's runs ``out_dir/<method>/seed<S>``: clean and PGD columns."""
    roots = [out_dir / m for m in methods if (out_dir / m).is_dir()]
    runs = [r for r in collect_runs(roots) if r.seed in set(seeds)]
    robust = robust_column(eps, steps)
    report = make_report(assign_methods(runs), expected_seeds=list(seeds))
    report.columns = [c for c in ("clean", robust) if c in report.columns]
    report.hm_attack = robust if robust in report.columns else None
    return report


def _run(cmd: List[str]) -> None:
    """Run one demo command; one intra-op thread unless OMP_NUM_THREADS says otherwise
    (the tiny model gains nothing from more, and loses a lot on a busy machine)."""
    logger.info("Running %s", " ".join(cmd))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run(cmd, cwd=REPO_ROOT, check=True, env=env)


def run_method(method: str, root: Path, out_dir: Path, seed: int, backbone: Path, shots: int,
               force: bool = False, opts: Sequence[str] = (), eval_steps: int = EVAL_STEPS) -> float:
    """Train (unless the run finished) and evaluate one method and seed; returns the seconds spent.

    The run's own test gives the clean record; ``evaluate.py`` adds the PGD
    one unless results.json holds it (adversarial trainers record it while
    training).
    """
    run_dir = out_dir / method / f"seed{seed}"
    method_config(method)  # a method without a demo config: one line, before anything runs
    start = time.perf_counter()
    if RunResults(run_dir).finished and not force:
        logger.info("%s seed %d: finished run in %s, not trained again", method, seed, run_dir)
    else:
        _run(train_command(method, root, run_dir, seed, backbone, shots, force, opts))
    if _accuracy(run_dir, "pgd", EVAL_EPS, eval_steps) is None:
        _run(evaluate_command(run_dir, steps=eval_steps))
    return time.perf_counter() - start


def run_demo(root: PathLike, out_dir: PathLike, seeds: Sequence[int] = (1,),
             methods: Sequence[str] = DEFAULT_METHODS, shots: int = 4, adversarial: bool = True,
             force: bool = False, opts: Sequence[str] = (), eval_steps: int = EVAL_STEPS,
             pretrain_overrides: Optional[Mapping[str, Any]] = None,
             backbone_kind: str = "clip") -> str:
    """Prepare data, pretrain (cached), run ``methods`` x ``seeds``; write and return the report's table.

    ``backbone_kind="open_clip"``: the tiny CLIP is built by open_clip, and the
    runs and the table go to ``out_dir/open_clip``.

    ``opts`` are ``KEY VALUE`` overrides appended to every ``train.py`` call;
    ``pretrain_overrides`` are :class:`~ampt.demo.pretrain.PretrainSettings` fields.
    """
    root, out_dir = Path(root).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    for method in methods:
        method_config(method)  # a missing demo config: one line before the data and backbone are made
    start = time.perf_counter()
    prepare_digits(root)
    name = "tiny_clip_digits_tecoa.pt" if adversarial else "tiny_clip_digits.pt"
    if backbone_kind == "open_clip":
        out_dir = out_dir / "open_clip"
        name = "tiny_open_clip_digits_tecoa" if adversarial else "tiny_open_clip_digits"  # a folder
    backbone = pretrain_tiny_clip(root, out_dir / "backbone" / name, adversarial=adversarial,
                                  backbone_kind=backbone_kind, **dict(pretrain_overrides or {}))
    seconds = {"pretrain": float(read_json(sidecar_path(backbone))["seconds"])}
    for method in methods:
        for seed in seeds:
            seconds[f"{method}/seed{seed}"] = round(
                run_method(method, root, out_dir, seed, backbone, shots, force, opts, eval_steps), 1)
    report = demo_report(out_dir, methods, seeds, steps=eval_steps)
    table = render(report, "markdown")
    header = (f"Digits, {shots}-shot, tiny {'robust (TeCoA-style) ' if adversarial else ''}"
              f"{'open_clip ' if backbone_kind == 'open_clip' else ''}CLIP "
              "backbone, accuracy on the test split")
    (out_dir / "results.md").write_text(f"{header}\n\n{table}\n", encoding="utf-8")
    write_json({"dataset": DATASET_NAME, "shots": shots, "seeds": list(seeds), "backbone": str(backbone),
                "backbone_kind": backbone_kind,
                "adversarial_pretraining": adversarial, "report": report_dict(report), "seconds": seconds,
                "total_seconds": round(time.perf_counter() - start, 1)}, out_dir / SUMMARY_FILE)
    return table
