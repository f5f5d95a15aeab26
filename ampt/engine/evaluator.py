"""Dassl's ``Classification`` evaluator; its result block is what log parsers read."""
from __future__ import annotations

import logging
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch

from ..registry import Registry
from ..utils import distributed

logger = logging.getLogger(__name__)

EVALUATOR_REGISTRY = Registry("evaluator")



def macro_f1_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over the labels present in ``y_true`` of F1 = 2 TP / (2 TP + FP + FN) (0 where undefined).

    scikit-learn's ``f1_score(average="macro", labels=unique(y_true))``, without its import cost.
    """
    scores = []
    for label in np.unique(y_true):
        predicted, actual = y_pred == label, y_true == label
        tp = int(np.sum(predicted & actual))
        denominator = 2 * tp + int(np.sum(predicted & ~actual)) + int(np.sum(~predicted & actual))
        scores.append(2 * tp / denominator if denominator else 0.0)
    return float(np.mean(scores))

class EvaluatorBase:
    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def reset(self) -> None:
        raise NotImplementedError

    def process(self, mo: torch.Tensor, gt: torch.Tensor) -> None:
        raise NotImplementedError

    def evaluate(self) -> Dict[str, float]:
        raise NotImplementedError


@EVALUATOR_REGISTRY.register()
class Classification(EvaluatorBase):
    """Top-1 accuracy, error and macro F1 (over the labels present), in percent."""

    def __init__(self, cfg: Any, lab2cname: Optional[Mapping[int, str]] = None, **kwargs: Any) -> None:
        super().__init__(cfg)
        self._lab2cname = lab2cname
        self._per_class = bool(cfg.TEST.PER_CLASS_RESULT)
        if self._per_class and lab2cname is None:
            raise ValueError("TEST.PER_CLASS_RESULT needs lab2cname (class names)")
        self.reset()

    def reset(self) -> None:
        self._correct = 0
        self._total = 0
        self._y_true: List[int] = []
        self._y_pred: List[int] = []
        self._per_class_res: Dict[int, List[int]] = defaultdict(list)

    @property
    def total(self) -> int:
        """Images processed since the last reset (the ``n_samples`` of a record)."""
        return self._total

    def process(self, mo: torch.Tensor, gt: torch.Tensor) -> None:
        """``mo``: logits [B, C]; ``gt``: labels [B]."""
        pred = mo.max(1)[1]
        matches = pred.eq(gt)
        self._correct += int(matches.sum().item())
        self._total += int(gt.shape[0])
        self._y_true.extend(gt.detach().cpu().tolist())
        self._y_pred.extend(pred.detach().cpu().tolist())
        if self._per_class:
            for label, match in zip(gt.tolist(), matches.tolist()):
                self._per_class_res[label].append(int(match))

    def state(self) -> Dict[str, Any]:
        """What :meth:`merge` needs from another process's evaluator (a sharded test)."""
        return {"correct": self._correct, "total": self._total, "y_true": self._y_true, "y_pred": self._y_pred,
                "per_class": dict(self._per_class_res)}

    def merge(self, states: List[Dict[str, Any]]) -> None:
        """Become the evaluator of all shards: ``states`` of every rank, this one's included."""
        self.reset()
        for state in states:
            self._correct += state["correct"]
            self._total += state["total"]
            self._y_true.extend(state["y_true"])
            self._y_pred.extend(state["y_pred"])
            for label, matches in state["per_class"].items():
                self._per_class_res[label].extend(matches)

    def evaluate(self) -> Dict[str, float]:
        """Log Dassl's block and return accuracy first (what ``test()`` returns)."""
        if self._total == 0:
            raise RuntimeError("The evaluator saw no images: the evaluation split is empty")
        acc = 100.0 * self._correct / self._total
        err = 100.0 - acc
        macro_f1 = 100.0 * macro_f1_score(np.asarray(self._y_true), np.asarray(self._y_pred))
        results: Dict[str, float] = OrderedDict(accuracy=acc, error_rate=err, macro_f1=macro_f1)
        logger.info(
            "=> result\n* total: %s\n* correct: %s\n* accuracy: %.1f%%\n* error: %.1f%%\n* macro_f1: %.1f%%",
            f"{self._total:,}",
            f"{self._correct:,}",
            acc,
            err,
            macro_f1,
        )
        if self._per_class:
            results["perclass_accuracy"] = self._log_per_class()
        if self.cfg.TEST.COMPUTE_CMAT and distributed.is_main():
            from sklearn.metrics import confusion_matrix  # seconds to import: only when asked

            cmat = confusion_matrix(self._y_true, self._y_pred, normalize="true")
            path = Path(self.cfg.OUTPUT_DIR) / "cmat.pt"
            torch.save(torch.from_numpy(cmat), path)
            logger.info("Confusion matrix is saved to %s", path)
        return results

    def _log_per_class(self) -> float:
        logger.info("=> per-class result")
        accs = []
        for label in sorted(self._per_class_res):
            res = self._per_class_res[label]
            acc = 100.0 * sum(res) / len(res)
            accs.append(acc)
            name = self._lab2cname[label]  # type: ignore[index]
            logger.info("* class: %d (%s)\ttotal: %s\tcorrect: %s\tacc: %.1f%%",
                        label, name, f"{len(res):,}", f"{sum(res):,}", acc)
        mean_acc = float(np.mean(accs))
        logger.info("* average: %.1f%%", mean_acc)
        return mean_acc


def build_evaluator(cfg: Any, **kwargs: Any) -> EvaluatorBase:
    """The evaluator named by ``cfg.TEST.EVALUATOR``."""
    return EVALUATOR_REGISTRY.get(cfg.TEST.EVALUATOR)(cfg, **kwargs)
