"""Clean and robust evaluation of a trained run: the back end of ``evaluate.py``.

- **What is attacked.** :func:`~ampt.evaluation.evaluated_prompt.prompt_model` gives the
  module of ``--prompt`` (:mod:`ampt.evaluation.evaluated_prompt`); its text features are
  computed once for all attacks; :func:`~ampt.evaluation.robust_accuracy.accuracy_under_attack`
  counts (:mod:`ampt.evaluation.robust_accuracy`). The run itself is rebuilt by
  :func:`ampt.evaluation.run_loader.load_run`.
- **Records.** One record per (dataset, split, attack, eps, steps, n_samples,
  prompt, subsample, alpha, seed), the key of ``results.json``
  (:mod:`ampt.results`, ``docs/results_format.md``); each says which weights it measured
  (``checkpoint_epoch``, ``weights``). An existing record of the same
  weights is skipped unless forced; one of other weights (an intermediate
  checkpoint) is recomputed.
- **Resumption.** Batches are evaluated in a fixed order and, after each
  batch, the running counts are written to ``RUN_DIR/eval_progress/``; an
  interrupted evaluation (AutoAttack on thousands of images) restarts at the
  first unfinished batch, also under ``--force``. The file is keyed by every
  setting and a hash of the weights, and removed once the record is written.
- **Shards.** Under ``torchrun`` the ranks share the (seeded) subset as
  :mod:`ampt.evaluation.robust_accuracy` says. Each rank keeps its own progress file
  (resume with the same number of processes); rank 0 writes the record.
- **Precision.** Attacks run in fp32 unless ``EvalPlan.precision`` says
  otherwise (:mod:`ampt.precision`); every record says its precision.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Subset

from ..attacks.naming import column_name
from ..engine.checkpoint import weights_digest
from ..utils import distributed
from ..errors import UserError
from ..evaluation.evaluated_prompt import prompt_model, record_prompt
from ..evaluation.image_lists import list_digest, match_image_ids, read_image_ids, relative_ids, write_image_list
from ..models.interface import LEARNED
from ..precision import at_precision, warn_reduced
from ..results import RunResults, same_weights
from ..evaluation.robust_accuracy import CLEAN, AttackSpec, Outcome, accuracies_under_one_attack
from ..evaluation.test_time import TestTimeEvaluation
from ..tta import THREATS, parse_settings, settings_text

logger = logging.getLogger(__name__)

PROGRESS_DIR = "eval_progress"


# ---------------------------------------------------------------- data
def ordered_indices(size: int, n_samples: Optional[int], seed: int) -> List[int]:
    """All indices, or a fixed seeded subset of ``n_samples`` of them (sorted)."""
    if n_samples is None or n_samples >= size:
        return list(range(size))
    if n_samples < 1:
        raise UserError(f"--n-samples must be >= 1 (got {n_samples})")
    generator = torch.Generator().manual_seed(int(seed))
    return sorted(torch.randperm(size, generator=generator)[:n_samples].tolist())


def subset_loader(loader: DataLoader, indices: Sequence[int], batch_size: Optional[int] = None) -> DataLoader:
    """A sequential loader over ``indices`` of ``loader``'s dataset, with its workers and transforms."""
    return DataLoader(
        Subset(loader.dataset, list(indices)),
        batch_size=batch_size or loader.batch_size,
        shuffle=False,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        collate_fn=loader.collate_fn,
    )


@dataclass
class EvaluatedImages:
    """The test images an evaluation runs on: dataset indices, record-key fields and provenance."""

    indices: List[int]
    key: Dict[str, Any]  # {"image_list": digest} for a user's list; else nothing (the seeded subset)
    provenance: Dict[str, Any]  # images_sha256 and, for a written subset list, its path


def evaluated_images(trainer: Any, plan: "EvalPlan", run_dir: Path) -> EvaluatedImages:
    """``--image-ids`` (exactly the listed images), else the seeded ``--n-samples`` subset, else all test images.

    A subset's list is written to ``RUN_DIR/image_lists/`` so that anyone can evaluate the same images.
    """
    data_source = trainer.test_loader.dataset.data_source
    impaths = [datum.impath for datum in data_source]
    ids = relative_ids(impaths, str(trainer.cfg.DATASET.ROOT or ""))
    if plan.image_ids is not None:
        listed = read_image_ids(Path(plan.image_ids))
        indices = match_image_ids(listed, impaths, Path(plan.image_ids))
        digest = list_digest(listed)
        return EvaluatedImages(indices, {"image_list": digest[:16]},
                               {"images_sha256": digest, "image_list_file": str(plan.image_ids)})
    indices = ordered_indices(len(data_source), plan.n_samples, plan.seed)
    chosen = [ids[i] for i in indices]
    provenance: Dict[str, Any] = {"images_sha256": list_digest(chosen)}
    if len(indices) < len(data_source) and distributed.is_main():
        classes = subsample_field(trainer.cfg).get("subsample")
        name = f"{trainer.cfg.DATASET.NAME}-{plan.split}{'-' + classes if classes else ''}-n{len(indices)}-seed{plan.seed}"
        path = write_image_list(run_dir, name, chosen)
        provenance["image_list_file"] = str(path.relative_to(run_dir))
    return EvaluatedImages(indices, {}, provenance)


# ---------------------------------------------------------------- one record
def make_record(dataset: str, split: str, spec: AttackSpec, prompt: str, outcome: Outcome,
                precision: str = "fp32", **extra: Any) -> Dict[str, Any]:
    """A results.json record (docs/results_format.md: required fields first, then the optional ones)."""
    record: Dict[str, Any] = {
        "dataset": dataset, "split": split, "attack": spec.name, "eps": spec.eps, "steps": spec.steps,
        "n_samples": outcome.n_samples, "accuracy": round(outcome.accuracy, 4), "prompt": prompt,
        "precision": precision, "label": spec.label, "column": spec.column, "seconds": round(outcome.seconds, 2),
    }
    record.update({k: v for k, v in spec.key_fields().items() if k not in ("attack", "eps", "steps", "alpha")})
    if distributed.world_size() > 1:
        record["world_size"] = distributed.world_size()  # "seconds" is the slowest rank's
    if spec.name != CLEAN:
        record["attack_prompt"] = prompt  # white-box: the attack sees the prompt it evaluates
        if spec.alpha is not None:
            record["alpha"] = round(spec.alpha, 4)
    record.update(outcome.extra)
    record.update(extra)
    if record.get("test_time"):
        record["column"] = column_name(record)  # with the test-time method and threat model
    return record


# ---------------------------------------------------------------- a run's evaluations
@dataclass
class TestTimePlan:
    """``--test-time METHOD... [--test-time-options k=v,...] [--threat ...]``: registered test-time methods.

    The options apply to every listed method (a key one of them lacks is refused).
    """

    methods: Tuple[str, ...]
    options: str = ""
    threats: Tuple[str, ...] = ("non-adaptive",)

    def __post_init__(self) -> None:
        self.methods = tuple(dict.fromkeys(self.methods))
        self.settings = {m: parse_settings(m, self.options) for m in self.methods}
        bad = [t for t in self.threats if t not in THREATS]
        if bad:
            raise UserError(f'--threat {bad[0]} is not one of {", ".join(THREATS)}')

    def key(self, method: str, spec: AttackSpec, threat: str) -> Dict[str, Any]:
        return {"test_time": method, "test_time_options": settings_text(self.settings[method]),
                "test_time_threat": "" if spec.name == CLEAN else threat}


@dataclass
class EvalPlan:
    """What ``evaluate.py`` computes on one run (eps etc. already resolved)."""

    specs: List[AttackSpec]
    prompt: str = LEARNED
    n_samples: Optional[int] = None
    seed: int = 0
    batch_size: Optional[int] = None
    force: bool = False
    split: str = "test"
    precision: str = "fp32"  # of the forward passes and attack gradients: fp32 | bf16 | fp16
    image_ids: Optional[Path] = None  # a list file: exactly these test images (RobustBench's format)
    test_time: Optional[TestTimePlan] = None  # adapt the prompts per test image (ampt.tta)


def progress_path(run_dir: Path, key: Dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return run_dir / PROGRESS_DIR / f"{key['attack']}-{digest}.json"


def subsample_field(cfg: Any) -> Dict[str, str]:
    """``{"subsample": "base" | "new"}`` for a base-to-new test set; nothing for all classes (the key's default)."""
    subsample = cfg.DATASET.get("SUBSAMPLE_CLASSES", "all")
    return {} if subsample == "all" else {"subsample": subsample}


@dataclass
class Job:
    """One attack (or clean pass) and the models that predict on its images: the run's model ("") and/or
    test-time methods; ``threat`` "" (no test time, or clean), "non-adaptive" or "adaptive"."""

    spec: AttackSpec
    threat: str
    members: List[Tuple[str, Dict[str, Any]]]  # (method or "", record key), records still to compute


def plan_jobs(plan: EvalPlan) -> List[Tuple[AttackSpec, str, List[str]]]:
    """``(spec, threat, [method or ""])`` per attack pass. Without test time: one pass per attack. With it:
    clean and each non-adaptive attack once for the run's model and every method (the images do not depend
    on the adaptation); each adaptive attack once per method (it attacks that method's loop)."""
    if plan.test_time is None:
        return [(spec, "", [""]) for spec in plan.specs]
    tt, jobs = plan.test_time, []
    for spec in plan.specs:
        if spec.name == CLEAN:
            jobs.append((spec, "", ["", *tt.methods]))
            continue
        if "non-adaptive" in tt.threats:
            jobs.append((spec, "non-adaptive", ["", *tt.methods]))
        if "adaptive" in tt.threats:
            jobs.extend((spec, "adaptive", [m]) for m in tt.methods)
    return jobs


def evaluate_trainer(trainer: Any, plan: EvalPlan, results: RunResults,
                     extra: Optional[Dict[str, Any]] = None) -> List[Tuple[Dict[str, Any], str]]:
    """Run ``plan`` on ``trainer``'s test set; returns ``(record, "computed" | "existing")`` pairs.

    Records already in ``results`` are skipped (and returned as "existing")
    unless ``plan.force``. Text features are computed once for all attacks;
    an attack's images are computed once for every model that predicts on
    them (:func:`plan_jobs`).
    """
    dataset_name = trainer.cfg.DATASET.NAME
    prompt = record_prompt(trainer, plan.prompt)
    subsample = subsample_field(trainer.cfg)
    base_loader = trainer.test_loader
    images = evaluated_images(trainer, plan, results.run_dir)
    n_samples = len(images.indices)
    rows: List[Tuple[Dict[str, Any], str]] = []
    jobs: List[Job] = []
    extra = {**(extra or {}), "weights": weights_digest(trainer), **images.provenance}
    for spec, threat, methods in plan_jobs(plan):
        members = []
        for method in methods:
            key = {"dataset": dataset_name, "split": plan.split, **spec.key_fields(), "n_samples": n_samples,
                   "prompt": prompt, **subsample, "seed": plan.seed, "precision": plan.precision, **images.key,
                   **(plan.test_time.key(method, spec, threat) if method else {})}
            existing = results.get(key)
            if existing is not None and not plan.force and same_weights(existing, extra):
                logger.info("Skipping %s%s on %s: already in %s (--force recomputes)", spec.label,
                            f" [{method} {threat}]" if method else "", dataset_name, results.path)
                rows.append((existing, "existing"))
                continue
            if existing is not None and not plan.force:
                logger.info("The stored %s record measured other weights (checkpoint epoch %s, not %s): recomputing",
                            spec.label, existing.get("checkpoint_epoch"), extra.get("checkpoint_epoch"))
            members.append((method, key))
        if members:
            jobs.append(Job(spec, threat, members))
    if not jobs:
        return rows
    trainer.set_model_mode("eval")
    warn_reduced(plan.precision)
    model = at_precision(prompt_model(trainer, plan.prompt).to(trainer.device).eval(), plan.precision)
    loader = subset_loader(base_loader, images.indices, plan.batch_size)
    test_time = None
    if plan.test_time is not None:
        test_time = TestTimeEvaluation.start(trainer, plan, results.run_dir, extra["weights"], model, loader)
    for job in jobs:
        spec, threat = job.spec, job.threat
        names = [m for m, _ in job.members]
        progress_file = progress_path(results.run_dir, {**job.members[0][1], "batch_size": loader.batch_size,
                                                        "models": names, **extra, **distributed.shard_key()})
        predictors = {m: (test_time.model(m) if m else model) for m in names}
        attacked = model if threat == "non-adaptive" else None
        outcomes = accuracies_under_one_attack(predictors, loader, spec, trainer.num_classes, trainer.device,
                                               seed=plan.seed, desc=f"{spec.label} [{dataset_name}]",
                                               progress_file=progress_file, attack_model=attacked)
        written = []
        for method, key in job.members:
            outcome = outcomes[method]
            tta_fields = test_time.record_fields(method, key["test_time_threat"]) if method else {}
            record = make_record(dataset_name, plan.split, spec, prompt, outcome, precision=plan.precision,
                                 seed=plan.seed, **subsample, **images.key, **extra, **tta_fields)
            stored = results.add(record, force=plan.force) if distributed.is_main() else True
            written.append((record, stored))
            logger.info("%s%s on %s (%d images, prompt %s): %.2f%% in %.1f s", spec.label,
                        f" [{method} {threat}]".rstrip() if method else "", dataset_name, outcome.n_samples, prompt,
                        outcome.accuracy, outcome.seconds)
            if not stored:
                logger.warning("Not written to %s: it keeps the finished run's record of its final model for this "
                               "setting (--force replaces it)", results.path)
            rows.append((record, "computed" if stored else "computed, not stored"))
        distributed.barrier()  # the records are written before any rank drops its progress
        progress_file.unlink(missing_ok=True)
    return rows


def results_table(rows: Iterable[Tuple[Dict[str, Any], str]]) -> str:
    """A plain-text table of records (tabulate)."""
    from tabulate import tabulate

    body = [[r["dataset"], r["attack"], f"{r['eps']:g}", r["steps"], r["n_samples"], r.get("prompt", ""),
             f"{r['accuracy']:.2f}", r.get("seconds", ""), status] for r, status in rows]
    headers = ["dataset", "attack", "eps (/255)", "steps", "n", "prompt", "accuracy (%)", "seconds", ""]
    if any(r.get("test_time") for r, _ in rows):
        for line, (r, _) in zip(body, rows):
            line.insert(6, f"{r.get('test_time', '')} {r.get('test_time_threat', '')}".strip())
        headers.insert(6, "test time")
    return tabulate(body, headers=headers)
