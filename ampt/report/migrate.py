"""Runs made with CoOp's or APT's own code: numbers from ``log.txt``, settings from the folder path.

The accuracy is the last ``* accuracy: X%`` after the last "Finish training"
line (Dassl prints "Finished training" in older versions), as CoOp's
``parse_test_res.py`` reads it; a test-only log (no training epochs) is read
after its last ``=> result`` line. A log that started training and has no
such line is an unfinished run. Folder layouts understood (the parts after
the dataset; anything may precede it)::

    CoOp   <dataset>/<trainer>/<cfg>_<shots>shots/nctx<N>_csc<C>_ctp<P>/seed<S>
    APT    <dataset>/<trainer>/<cfg>_<shots>shots/nctx<N>_csc<C>_ctp<P>/eps<E>_alpha<A>_step<K>[_<prompt>[_<palpha>]]/seed<S>
    CoCoOp base2new/<train_base|test_new|test_base>/<dataset>/shots_<shots>/<trainer>/<cfg>/seed<S>

APT's ``evaluate.py`` writes ``evaluation.yaml`` beside the log
(``{prompt: {clean: X, pgd: Y, ...}}``, 100 steps, eps from the folder): its
robust numbers are read too.
"""
from __future__ import annotations

import logging
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .collect import LOG_FILE, Run

logger = logging.getLogger(__name__)

ACCURACY = re.compile(r"\* accuracy: ([\.\deE+-]+)%")
END_OF_TRAINING = ("Finish training", "Finished training")
TEST_RESULT = "=> result"
EPOCH_LINE = re.compile(r"epoch \[\d+/\d+\]")
SEED = re.compile(r"seed(\d+)$")
SETTING = re.compile(r"nctx(\d+)_csc(\w+?)_ctp(\w+)$")
SHOTS = re.compile(r"(.+)_(\d+)shots$")
APT_ATTACK = re.compile(r"eps([\d.]+)_alpha([\d.]+)_step(\d+)(?:_([a-z]+))?(?:_([\d.]+))?$")
COCOOP_SHOTS = re.compile(r"shots_(\d+)$")
APT_EVAL_FILE = "evaluation.yaml"
APT_EVAL_STEPS = 100  # APT's evaluate.py: PGD/TPGD/CW with 100 steps, alpha eps/4


def read_log_accuracy(log: Path) -> Tuple[Optional[float], bool]:
    """``(accuracy, finished)`` from a Dassl ``log.txt``; ``(None, False)`` for an unfinished training."""
    lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines()]
    ends = [i for i, line in enumerate(lines) if line in END_OF_TRAINING]
    trained = any(EPOCH_LINE.search(line) for line in lines)
    if ends:
        start = ends[-1]
    elif not trained and TEST_RESULT in lines:
        start = max(i for i, line in enumerate(lines) if line == TEST_RESULT)
    else:
        return None, False
    found = [float(m.group(1)) for line in lines[start:] for m in [ACCURACY.search(line)] if m]
    return (found[-1] if found else None), bool(found)


def dataset_names() -> Dict[str, str]:
    """CoOp's config ids (``oxford_pets``) -> registered names (``OxfordPets``), from the configs/datasets/
    of the repository and of the plug-in folders (:mod:`ampt.config_paths`)."""
    from ..config_paths import config_roots

    return _dataset_names(tuple(config_roots()))


@lru_cache(maxsize=None)
def _dataset_names(roots: Tuple[Path, ...]) -> Dict[str, str]:  # roots: the cache key
    from ..config_paths import dataset_config_names

    return dataset_config_names()


def parse_layout(run_dir: Path) -> Optional[Dict[str, Any]]:
    """The settings a CoOp / APT / CoCoOp run folder path encodes; None for another layout."""
    parts = run_dir.parts
    seed = SEED.match(parts[-1]) if parts else None
    if seed is None or len(parts) < 5:
        return None
    settings: Dict[str, Any] = {"seed": int(seed.group(1))}
    rest = list(parts[:-1])
    attack = APT_ATTACK.match(rest[-1])
    if attack:
        eps, alpha, steps, prompt, palpha = attack.groups()
        settings.update(train_eps=float(eps), alpha=float(alpha), steps=int(steps),
                        adv_prompt=prompt or "onfly", source="APT log")
        if palpha:
            settings["prompt_alpha"] = float(palpha)
        rest.pop()
    setting = SETTING.match(rest[-1])
    if setting and len(rest) >= 4 and SHOTS.match(rest[-2]):
        settings.update(n_ctx=int(setting.group(1)), csc=setting.group(2), ctp=setting.group(3))
        cfg, shots = SHOTS.match(rest[-2]).groups()
        settings.update(cfg=cfg, shots=int(shots), trainer=rest[-3], dataset=rest[-4])
        settings.setdefault("source", "CoOp log")
        return settings
    shots = COCOOP_SHOTS.match(rest[-3]) if len(rest) >= 5 else None
    if shots and not attack:
        subsample = rest[-5].split("_", 1)[-1] if rest[-5] in ("train_base", "test_base", "test_new") else "all"
        settings.update(cfg=rest[-1], trainer=rest[-2], shots=int(shots.group(1)), dataset=rest[-4],
                        subsample=subsample, source="CoOp log")
        return settings
    return None


def _apt_records(run_dir: Path, dataset: str, eps: float, has_clean: bool) -> List[Dict[str, Any]]:
    """Records from APT's ``evaluation.yaml`` (prompt "prompter" is the learned one)."""
    path = run_dir / APT_EVAL_FILE
    if not path.is_file():
        return []
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    records = []
    for tune, scores in data.items():
        if not isinstance(scores, dict):
            continue
        prompt = "learned" if tune == "prompter" else str(tune)
        for attack, accuracy in scores.items():
            if not isinstance(accuracy, (int, float)) or (attack == "clean" and prompt == "learned" and has_clean):
                continue
            clean = attack == "clean"
            records.append({"dataset": dataset, "split": "test", "attack": attack, "eps": 0.0 if clean else eps,
                            "steps": 0 if clean or attack == "aa" else APT_EVAL_STEPS, "n_samples": None,
                            "accuracy": float(accuracy), "prompt": prompt})
    return records


def read_log_run(run_dir: Path) -> Optional[Run]:
    """A :class:`Run` from a CoOp/APT run folder (``log.txt``, path settings); None for other folders."""
    settings = parse_layout(run_dir)
    if settings is None:
        logger.info("Skipping %s: a log.txt outside CoOp's or APT's run-folder layout", run_dir / LOG_FILE)
        return None
    accuracy, finished = read_log_accuracy(run_dir / LOG_FILE)
    dataset = dataset_names().get(settings["dataset"], settings["dataset"])
    subsample = settings.get("subsample", "all")
    records = []
    if accuracy is not None:
        records.append({"dataset": dataset, "split": "test", "attack": "clean", "eps": 0.0, "steps": 0,
                        "n_samples": None, "accuracy": accuracy, "prompt": "learned", "subsample": subsample})
    train_eps = float(settings.get("train_eps", 0.0))
    records += _apt_records(run_dir, dataset, train_eps, accuracy is not None)
    label_settings = {k: v for k, v in settings.items()
                      if k not in ("seed", "shots", "dataset", "trainer", "source", "train_eps", "subsample")}
    # base2new: the test_new folder is an evaluation of the train_base run; both share one method setting
    trained_on = "base" if subsample in ("base", "new") else "all"
    return Run(path=run_dir, trainer=settings["trainer"], dataset=dataset, shots=settings["shots"],
               seed=settings["seed"], train_eps=train_eps, finished=finished, records=records,
               settings=label_settings, source=settings["source"], subsample=trained_on)
