"""Clean and robust evaluation of a trained run: the logic behind ``evaluate.py``.

Used by ``evaluate.py`` (any finished run) and by the adversarial trainers'
in-training test (:meth:`ampt.adversarial.AdversarialClipTrainer.final_evaluation`).

- **Prompt modes.** :func:`prompt_model` turns a trainer into the module an
  attack receives: "learned" (the run's prompts), a hand-written template
  with one ``{}`` (zero-shot on the same backbone), or a mode the trainer
  adds through its ``eval_prompt_model(prompt)`` hook (AMPT's "uniform").
  Text features that do not depend on the image are computed once per
  evaluation (:class:`~ampt.models.FixedTextFeatures`); everything that does
  (AMPT's router) stays inside the attacked forward.
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
- **Shards.** Under ``torchrun`` each rank attacks whole batches of the
  (seeded) subset, dealt round-robin (:mod:`ampt.engine.distributed`): every
  batch is the batch of a one-process run, attacked with the same seed, and
  the ranks' integer counts are summed, so the accuracy is exactly the
  one-process accuracy. Each rank keeps its own progress file (resume with
  the same number of processes); rank 0 writes the record.
- **Precision.** Attacks run in fp32 unless ``EvalPlan.precision`` says
  otherwise (:mod:`ampt.precision`); every record says its precision.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from .attacks import ATTACK_REGISTRY, build_attack, check_eps
from .engine.checkpoint import weights_digest
from .engine import distributed
from .engine.progress import progress_bar
from .models import FixedTextFeatures
from .models.interface import LEARNED
from .models.templates import check_template
from .precision import at_precision, warn_reduced
from .results import RunResults, same_weights
from .utils.io import read_json, write_json
from .errors import UserError, UserFileNotFoundError
from .finite import check_finite_logits

logger = logging.getLogger(__name__)

PROGRESS_DIR = "eval_progress"
# Clean accuracy is a record like the attacks' (docs/results_format.md): attack "clean", eps 0, steps 0.
CLEAN = "clean"


# ---------------------------------------------------------------- prompt modes
def prompt_count(model: nn.Module) -> int:
    """K, the number of prompts of ``model`` (the interface's ``n_prompts``)."""
    return int(model.n_prompts)


def named_prompt_modes(trainer: Any) -> Tuple[str, ...]:
    """The prompt names ``trainer`` understands, besides templates: "learned" plus its own."""
    return (LEARNED, *trainer.eval_prompt_modes)


def record_prompt(trainer: Any, prompt: str) -> str:
    """The ``prompt`` field of a record: "learned" is the model's own label (its template when nothing is learned)."""
    return trainer.model.prompt_label() if prompt == LEARNED else prompt


@torch.no_grad()
def prompt_model(trainer: Any, prompt: str = LEARNED) -> nn.Module:
    """The module (pixels in [0, 1] -> logits) that ``prompt`` evaluates, text features fixed.

    The trainer's ``eval_prompt_model(prompt)`` hook is asked first (None
    means "not mine"); then "learned" and templates are handled here through
    the model's interface (:class:`~ampt.models.interface.PromptModel`).
    """
    module = trainer.eval_prompt_model(prompt)
    if module is not None:
        return module
    model = trainer.model
    if prompt == LEARNED:
        return FixedTextFeatures(model, model.text_features())
    if "{" in prompt:
        return FixedTextFeatures(model, model.template_features(trainer.dm.dataset.classnames, check_template(prompt)))
    raise UserError(
        f'Unknown --prompt "{prompt}" for {type(trainer).__name__}; valid: '
        f'{", ".join(named_prompt_modes(trainer))}, or a template with one "{{}}" such as "a photo of a {{}}."'
    )


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


# ---------------------------------------------------------------- one evaluation
@dataclass
class AttackSpec:
    """One evaluation: ``name`` "clean" or a registered attack; eps/alpha in 1/255 units."""

    name: str
    eps: float = 0.0
    steps: int = 0
    alpha: Optional[float] = None

    def __post_init__(self) -> None:
        if self.name == CLEAN:
            self.eps, self.steps, self.alpha = 0.0, 0, None
            return
        ATTACK_REGISTRY.get(self.name)  # unknown name: lists the valid ones
        self.eps = check_eps(self.eps)
        if self.parameter_free:
            self.steps, self.alpha = 0, None
        else:
            self.alpha = self.eps / 4 if self.alpha is None or self.alpha < 0 else float(self.alpha)

    @property
    def parameter_free(self) -> bool:
        return self.name != CLEAN and bool(getattr(ATTACK_REGISTRY.get(self.name), "parameter_free", False))

    @property
    def label(self) -> str:
        """How logs and tables name the number, e.g. "robust accuracy (PGD-10, eps 4/255)"."""
        if self.name == CLEAN:
            return "clean accuracy"
        name = self.name.upper() if self.parameter_free else f"{self.name.upper()}-{self.steps}"
        return f"robust accuracy ({name}, eps {self.eps:g}/255)"

    def build(self, model: nn.Module, num_classes: int, seed: int) -> Any:
        if self.name == CLEAN:
            return None
        return build_attack(self.name, model, self.eps, alpha=self.alpha, steps=self.steps,
                            num_classes=num_classes, seed=seed)


BatchObserver = Callable[[str, torch.Tensor], None]
"""Told ``("clean", labels)`` after each clean forward of :func:`accuracy_under_attack` and
``("attacked", labels)`` after each attacked one, so that a trainer can read what its model
kept of that forward (AMPT: the router's weights) without a second pass."""


@dataclass
class Outcome:
    accuracy: float
    n_samples: int
    seconds: float
    extra: Dict[str, Any] = field(default_factory=dict)


def accuracy_under_attack(
    model: nn.Module,
    loader: DataLoader,
    spec: AttackSpec,
    num_classes: int,
    device: torch.device,
    seed: int = 0,
    desc: str = "",
    progress_file: Optional[Path] = None,
    observer: Optional[BatchObserver] = None,
) -> Outcome:
    """Top-1 accuracy (percent) of ``model`` on ``loader``'s images, clean or attacked.

    Robust accuracy counts an image only if it is classified correctly both
    clean and attacked: the clean image lies in its own eps-ball, so the
    worst case over the ball includes it (AutoAttack counts the same way),
    and robust accuracy never exceeds clean accuracy. One progress bar.
    With ``progress_file``, counts are saved after every batch and a
    matching file from an interrupted call is resumed. Under torchrun each
    rank evaluates its shard of ``loader`` (whole batches) and the counts are
    summed over ranks; ``progress_file`` is then this rank's own.
    ``observer`` sees the batches this call evaluates (this rank's shard,
    after any resumed ones).
    """
    model.eval()
    loader = distributed.shard_loader(loader)
    attack = spec.build(model, num_classes, seed)
    if attack is not None:
        logger.info("Attack: %r", attack)
    state = {"batches": 0, "correct": 0, "total": 0, "seconds": 0.0}
    if progress_file is not None and progress_file.is_file():
        state = read_json(progress_file)["state"]
        logger.info("Resuming %s after %d batches (%d images) from %s",
                    spec.label, state["batches"], state["total"], progress_file)
    bar = progress_bar(loader, total=len(loader), desc=desc or spec.label)
    for index, batch in enumerate(bar):
        if index < state["batches"]:
            continue
        start = time.perf_counter()
        images, labels = batch["img"].to(device), batch["label"].to(device)
        with torch.no_grad():
            logits = model(images)
            if observer is not None:
                observer("clean", labels)
        check_finite_logits(logits, f"clean images, batch {index}")
        correct = logits.argmax(dim=1) == labels
        if attack is not None:
            adv = attack(images, labels)
            with torch.no_grad():
                logits = model(adv)
                if observer is not None:
                    observer("attacked", labels)
            check_finite_logits(logits, f"{spec.label}, batch {index}")
            correct &= logits.argmax(dim=1) == labels
        state["correct"] += int(correct.sum())
        state["total"] += int(labels.numel())
        state["batches"] = index + 1
        state["seconds"] += time.perf_counter() - start
        bar.set_postfix_str(f"acc {100.0 * state['correct'] / state['total']:.2f}%", refresh=False)
        if progress_file is not None:
            write_json({"state": state}, progress_file)
    bar.close()
    correct, total = distributed.all_reduce_sum([state["correct"], state["total"]])
    state = {**state, "correct": correct, "total": total, "seconds": distributed.all_reduce_max(state["seconds"])}
    if state["total"] == 0:
        raise RuntimeError("The evaluation saw no images: the test split (or subset) is empty")
    extra: Dict[str, Any] = {}
    if attack is not None and getattr(attack, "library", None):
        extra["library"] = attack.library
    return Outcome(100.0 * state["correct"] / state["total"], state["total"], state["seconds"], extra)


def make_record(dataset: str, split: str, spec: AttackSpec, prompt: str, outcome: Outcome,
                precision: str = "fp32", **extra: Any) -> Dict[str, Any]:
    """A results.json record (docs/results_format.md: required fields first, then the optional ones)."""
    record: Dict[str, Any] = {
        "dataset": dataset, "split": split, "attack": spec.name, "eps": spec.eps, "steps": spec.steps,
        "n_samples": outcome.n_samples, "accuracy": round(outcome.accuracy, 4), "prompt": prompt,
        "precision": precision, "label": spec.label, "seconds": round(outcome.seconds, 2),
    }
    if distributed.world_size() > 1:
        record["world_size"] = distributed.world_size()  # "seconds" is the slowest rank's
    if spec.name != CLEAN:
        record["attack_prompt"] = prompt  # white-box: the attack sees the prompt it evaluates
        if spec.alpha is not None:
            record["alpha"] = round(spec.alpha, 4)
    record.update(outcome.extra)
    record.update(extra)
    return record


# ---------------------------------------------------------------- a run's evaluations
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


def progress_path(run_dir: Path, key: Dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return run_dir / PROGRESS_DIR / f"{key['attack']}-{digest}.json"


def subsample_field(cfg: Any) -> Dict[str, str]:
    """``{"subsample": "base" | "new"}`` for a base-to-new test set; nothing for all classes (the key's default)."""
    subsample = cfg.DATASET.get("SUBSAMPLE_CLASSES", "all")
    return {} if subsample == "all" else {"subsample": subsample}


def evaluate_trainer(trainer: Any, plan: EvalPlan, results: RunResults,
                     extra: Optional[Dict[str, Any]] = None) -> List[Tuple[Dict[str, Any], str]]:
    """Run ``plan`` on ``trainer``'s test set; returns ``(record, "computed" | "existing")`` pairs.

    Records already in ``results`` are skipped (and returned as "existing")
    unless ``plan.force``. Text features are computed once for all attacks.
    """
    dataset_name = trainer.cfg.DATASET.NAME
    prompt = record_prompt(trainer, plan.prompt)
    subsample = subsample_field(trainer.cfg)
    base_loader = trainer.test_loader
    indices = ordered_indices(len(base_loader.dataset), plan.n_samples, plan.seed)
    n_samples = len(indices)
    rows: List[Tuple[Dict[str, Any], str]] = []
    todo = []
    extra = {**(extra or {}), "weights": weights_digest(trainer)}
    for spec in plan.specs:
        key = {"dataset": dataset_name, "split": plan.split, "attack": spec.name, "eps": spec.eps,
               "steps": spec.steps, "n_samples": n_samples, "prompt": prompt, **subsample, "alpha": spec.alpha,
               "seed": plan.seed, "precision": plan.precision}
        existing = results.get(key)
        if existing is not None and not plan.force and same_weights(existing, extra):
            logger.info("Skipping %s on %s: already in %s (--force recomputes)", spec.label, dataset_name, results.path)
            rows.append((existing, "existing"))
            continue
        if existing is not None and not plan.force:
            logger.info("The stored %s record measured other weights (checkpoint epoch %s, not %s): recomputing",
                        spec.label, existing.get("checkpoint_epoch"), extra.get("checkpoint_epoch"))
        todo.append((spec, key))
    if not todo:
        return rows
    trainer.set_model_mode("eval")
    warn_reduced(plan.precision)
    model = at_precision(prompt_model(trainer, plan.prompt).to(trainer.device).eval(), plan.precision)
    loader = subset_loader(base_loader, indices, plan.batch_size)
    for spec, key in todo:
        progress_file = progress_path(results.run_dir, {**key, "batch_size": loader.batch_size, **extra,
                                                        **distributed.shard_key()})
        outcome = accuracy_under_attack(model, loader, spec, trainer.num_classes, trainer.device,
                                        seed=plan.seed, desc=f"{spec.label} [{dataset_name}]",
                                        progress_file=progress_file)
        record = make_record(dataset_name, plan.split, spec, prompt, outcome, precision=plan.precision,
                             seed=plan.seed, **subsample, **extra)
        stored = results.add(record, force=plan.force) if distributed.is_main() else True
        distributed.barrier()  # the record is written before any rank drops its progress
        progress_file.unlink(missing_ok=True)
        logger.info("%s on %s (%d images, prompt %s): %.2f%% in %.1f s", spec.label, dataset_name,
                    outcome.n_samples, prompt, outcome.accuracy, outcome.seconds)
        if not stored:
            logger.warning("Not written to %s: it keeps the finished run's record of its final model for this "
                           "setting (--force replaces it)", results.path)
        rows.append((record, "computed" if stored else "computed, not stored"))
    return rows


def results_table(rows: Iterable[Tuple[Dict[str, Any], str]]) -> str:
    """A plain-text table of records (tabulate)."""
    from tabulate import tabulate

    body = [[r["dataset"], r["attack"], f"{r['eps']:g}", r["steps"], r["n_samples"], r.get("prompt", ""),
             f"{r['accuracy']:.2f}", r.get("seconds", ""), status] for r, status in rows]
    headers = ["dataset", "attack", "eps (/255)", "steps", "n", "prompt", "accuracy (%)", "seconds", ""]
    return tabulate(body, headers=headers)


# ---------------------------------------------------------------- loading a run
@dataclass
class LoadedRun:
    trainer: Any
    epoch: Optional[int]  # the checkpoint epoch loaded (None: the best-val model)
    train_dataset: str  # the dataset the run was trained on
    adversarial: bool


def resolve_dataset_name(name: str) -> str:
    """A registered dataset name; a config id (``configs/datasets/<id>.yaml``) is accepted too."""
    from .api import DATASET_REGISTRY
    from .plugins import plugin_root

    if name in DATASET_REGISTRY.registered_names():
        return name
    yaml_path = plugin_root() / "configs" / "datasets" / f"{name}.yaml"
    if yaml_path.is_file():
        from yacs.config import CfgNode

        with open(yaml_path, "r", encoding="utf-8") as f:
            configured = (CfgNode.load_cfg(f).get("DATASET") or {}).get("NAME", "")
        if configured:
            return configured
    DATASET_REGISTRY.get(name)  # raises with the valid names and the closest one
    return name


def _latest_epoch(run_dir: Path, model_names: Sequence[str]) -> Optional[int]:
    from .engine.checkpoint import latest_checkpoint

    epochs = []
    for name in model_names:
        path = latest_checkpoint(run_dir / name)
        if path is None:
            raise UserFileNotFoundError(f"No checkpoint of model '{name}' under {run_dir / name}: was the run trained?")
        epochs.append(int(path.name.rsplit("-", 1)[1]))
    return min(epochs) if epochs else None


def _class_specific(cfg: Any) -> bool:
    node = cfg.TRAINER.get(str(cfg.TRAINER.NAME).upper())
    return node is not None and "CSC" in node and bool(node.CSC)


def _check_prompt_transfers(cfg: Any, train_dataset: str, target: str) -> None:
    if _class_specific(cfg):
        raise UserError(
            f"This run learned a class-specific prompt (TRAINER.{cfg.TRAINER.NAME.upper()}.CSC True) for the "
            f"classes of {train_dataset}; it has no context for the classes of {target}. Only a unified "
            "prompt (CSC False) transfers to another dataset."
        )


def _set_subsample(cfg: Any, subsample: str) -> None:
    """Evaluate on the ``subsample`` half of the classes (CoOp's base-to-new); a CSC prompt cannot change classes."""
    from .data.splits import SUBSAMPLE_CHOICES

    if subsample not in SUBSAMPLE_CHOICES:
        raise UserError(f'--subsample "{subsample}" is not valid; valid: {", ".join(SUBSAMPLE_CHOICES)}')
    trained = cfg.DATASET.SUBSAMPLE_CLASSES
    if subsample != trained and _class_specific(cfg):
        raise UserError(
            f"This run learned a class-specific prompt (TRAINER.{cfg.TRAINER.NAME.upper()}.CSC True) for its "
            f'"{trained}" classes; it has no context for the "{subsample}" classes. Only a unified prompt '
            "(CSC False) is evaluated on other classes."
        )
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample


def load_run(run_dir: Path, dataset: Optional[str] = None, root: str = "", batch_size: Optional[int] = None,
             load_epoch: Optional[int] = None, seed: int = 0, subsample: Optional[str] = None) -> LoadedRun:
    """Rebuild the trainer of ``run_dir`` (its ``config.yaml``) in eval mode with the run's weights.

    ``dataset`` swaps the test set for another registered dataset (its own
    class names; a unified prompt transfers, a class-specific one cannot).
    ``subsample`` ("base", "new", "all") picks the classes of the test set
    (CoOp's base-to-new; default: the run's own ``DATASET.SUBSAMPLE_CLASSES``).
    ``load_epoch`` picks a checkpoint; by default the model the run deployed
    (best-val with ``TEST.FINAL_MODEL best_val``, else the latest epoch).
    """
    from .config import check_eps_units, merge_from_file
    from .engine.select import active_api
    from .plugins import load_plugins
    from .utils.seed import set_random_seed

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise UserFileNotFoundError(f"{cfg_path} not found: RUN_DIR must be a folder written by train.py")
    engine = RunResults(run_dir).run.get("engine", "builtin")
    load_plugins(engine)
    api = active_api()
    from yacs.config import CfgNode

    with open(cfg_path, "r", encoding="utf-8") as f:
        name = (CfgNode.load_cfg(f).get("TRAINER") or {}).get("NAME", "")
    trainer_cls = api.TRAINER_REGISTRY.get(name)
    cfg = api.get_cfg_default()
    if hasattr(trainer_cls, "add_config"):
        trainer_cls.add_config(cfg)
    merge_from_file(cfg, str(cfg_path))
    train_dataset = cfg.DATASET.NAME
    cfg.OUTPUT_DIR = str(run_dir)
    cfg.RESUME = ""
    if root:
        cfg.DATASET.ROOT = root
    if batch_size is not None:
        if batch_size < 1:
            raise UserError(f"--batch-size must be >= 1 (got {batch_size})")
        cfg.DATALOADER.TEST.BATCH_SIZE = batch_size
    if dataset is not None:
        target = resolve_dataset_name(dataset)
        if target != train_dataset:
            _check_prompt_transfers(cfg, train_dataset, target)
            cfg.DATASET.NAME = target
            cfg.DATASET.SUBSAMPLE_CLASSES = "all"
            cfg.DATASET.NUM_SHOTS = -1  # the training split of the target is not used
    if subsample is not None:
        _set_subsample(cfg, subsample)
    check_eps_units(cfg)
    cfg.freeze()
    set_random_seed(seed)
    trainer = api.build_trainer(cfg)
    epoch = load_epoch
    if epoch is None and not (cfg.TEST.FINAL_MODEL == "best_val"):
        epoch = _latest_epoch(run_dir, trainer.get_model_names())
    trainer.load_model(str(run_dir), epoch=epoch)
    trainer.set_model_mode("eval")
    return LoadedRun(trainer, epoch, train_dataset, bool(getattr(trainer, "adversarial", False)))
