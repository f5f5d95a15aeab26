"""What an artifact says about a run's numbers: the records and audits of the exported weights, and its protocol."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List

from ..results import RunResults

logger = logging.getLogger(__name__)

RECORD_FIELDS = ("dataset", "split", "attack", "eps", "steps", "n_samples", "accuracy", "label", "prompt",
                 "attack_prompt", "subsample", "alpha", "seed", "precision", "restarts", "eot_iter",
                 "attack_options", "bpda", "adaptive", "checkpoint_epoch", "train_dataset")
TRAINING_FIELDS = ("train_alpha", "train_steps", "train_attack_prompt", "train_projection", "train_loss", "objective",
                   "lr", "global_batch")


def records_summary(run_dir: Path, weights: str) -> Dict[str, Any]:
    """The run's records and audit entries that measured ``weights`` (the exported ones), and its protocol label."""
    data = RunResults(run_dir).load()
    kept = [r for r in data["records"] if r.get("weights") in (None, weights)]
    audits = [_audit(a) for a in data.get("audit", []) if isinstance(a, dict) and a.get("weights") in (None, weights)]
    return {"protocol": _protocol(run_dir), "seeds": [data["run"].get("seed")],
            "records": [{k: r[k] for k in RECORD_FIELDS if k in r} for r in kept],
            "records_of_other_weights": len(data["records"]) - len(kept), "audit": audits}


def training_attack(run: Dict[str, Any]) -> Dict[str, Any]:
    """The training attack and loss of a results.json run block (what the run block records of them)."""
    return {k: run[k] for k in TRAINING_FIELDS if k in run}


def _audit(entry: Dict[str, Any]) -> Dict[str, Any]:
    settings = entry.get("settings") or {}
    return {"status": entry.get("status"), "flags": list(entry.get("flags") or []), "eps": entry.get("eps"),
            "n_samples": entry.get("n_samples"), "clean_acc": entry.get("clean_acc"),
            "checks": list(settings.get("checks") or []), "created": entry.get("created")}


def _protocol(run_dir: Path) -> str:
    """The report's protocol label of the run (:mod:`ampt.report.protocols`); "" when it cannot be derived."""
    from ..report.collect import collect_runs
    from ..report.protocols import derive_protocol

    runs: List[Any] = [r for r in collect_runs([run_dir]) if Path(r.path).resolve() == Path(run_dir).resolve()]
    return derive_protocol(runs[0]).label if runs else ""
