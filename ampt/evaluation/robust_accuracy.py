"""Top-1 accuracy of a model on a loader's images, clean or under one attack.

Robust accuracy counts an image only if it is classified correctly both
clean and attacked (:func:`accuracy_under_attack`). Used by ``evaluate.py``'s
back end (:mod:`ampt.evaluation.evaluate_cli`) and by the adversarial trainers' own
robust test (:meth:`ampt.trainer_base.adversarial.AdversarialClipTrainer.final_evaluation`).

Under ``torchrun`` each rank attacks whole batches of the loader, dealt
round-robin (:mod:`ampt.utils.distributed`): every batch is the batch of a
one-process run, attacked with the same seed, and the ranks' integer counts
are summed, so the accuracy is exactly the one-process accuracy.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..attacks import ATTACK_REGISTRY, build_attack, check_attack_settings, check_eps
from ..attacks.autoattack import parse_attack_list
from ..attacks.naming import column_name
from ..engine.progress import progress_bar
from ..utils import distributed
from ..finite import check_finite_logits
from ..models.parts import adaptive_label, declared_parts, part_kinds
from ..utils.io import read_json, write_json

logger = logging.getLogger(__name__)

# Clean accuracy is a record like the attacks' (docs/results_format.md): attack "clean", eps 0, steps 0.
CLEAN = "clean"


@dataclass
class AttackSpec:
    """One evaluation: ``name`` "clean" or a registered attack; eps/alpha in 1/255 units.

    ``steps`` None means the attack's default (100; Square: 5,000 queries;
    none for AutoAttack's versions); ``restarts``, ``eot_iter``, ``options``
    (aa-custom's attack list) and ``bpda`` are refused in one line by an
    attack that does not take them.
    """

    name: str
    eps: float = 0.0
    steps: Optional[int] = None
    alpha: Optional[float] = None
    restarts: int = 1
    eot_iter: int = 1
    options: str = ""
    bpda: bool = False

    def __post_init__(self) -> None:
        if self.name == CLEAN:
            self.eps, self.steps, self.alpha = 0.0, 0, None
            self.restarts, self.eot_iter, self.options, self.bpda = 1, 1, "", False
            return
        cls = ATTACK_REGISTRY.get(self.name)  # unknown name: lists the valid ones
        self.eps = check_eps(self.eps)
        self.restarts, self.eot_iter = int(self.restarts), int(self.eot_iter)
        if self.name == "aa-custom":
            self.options = ",".join(parse_attack_list(self.options))
        check_attack_settings(self.name, None, self.steps if cls.default_steps is not None else None,
                              self.restarts, self.eot_iter, self.options)
        if cls.default_steps is None:
            self.steps, self.alpha = 0, None
        else:
            self.steps = cls.default_steps if self.steps is None else int(self.steps)
            if not cls.takes_alpha:
                self.alpha = None
            else:
                self.alpha = self.eps / 4 if self.alpha is None or self.alpha < 0 else float(self.alpha)

    @property
    def parameter_free(self) -> bool:
        return self.name != CLEAN and ATTACK_REGISTRY.get(self.name).default_steps is None

    @property
    def column(self) -> str:
        """The report's column of this evaluation, e.g. ``pgd-100x5@4`` (:mod:`ampt.attacks.naming`)."""
        return column_name(self.key_fields())

    def key_fields(self) -> Dict[str, Any]:
        """The record-key fields this evaluation sets (the later ones only when not at their defaults)."""
        fields: Dict[str, Any] = {"attack": self.name, "eps": self.eps, "steps": self.steps, "alpha": self.alpha}
        for name, default in (("restarts", 1), ("eot_iter", 1), ("options", ""), ("bpda", False)):
            value = getattr(self, name)
            if value != default:
                fields["attack_options" if name == "options" else name] = value
        return fields

    @property
    def label(self) -> str:
        """How logs and tables name the number, e.g. "robust accuracy (PGD-10, eps 4/255)"."""
        if self.name == CLEAN:
            return "clean accuracy"
        name = self.name.upper() if self.parameter_free else f"{self.name.upper()}-{self.steps}"
        if self.options:
            name += f" [{self.options}]"
        if self.restarts > 1:
            name += f", {self.restarts} restarts"
        if self.eot_iter > 1:
            name += f", EOT {self.eot_iter}"
        if self.bpda:
            name += ", BPDA"
        return f"robust accuracy ({name}, eps {self.eps:g}/255)"

    def build(self, model: nn.Module, num_classes: int, seed: int) -> Any:
        if self.name == CLEAN:
            return None
        cls = ATTACK_REGISTRY.get(self.name)
        return build_attack(self.name, model, self.eps, alpha=self.alpha,
                            steps=None if cls.default_steps is None else self.steps,
                            num_classes=num_classes, seed=seed, restarts=self.restarts, eot_iter=self.eot_iter,
                            options=self.options, bpda=self.bpda)


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
    attack_model: Optional[nn.Module] = None,
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
    after any resumed ones). ``attack_model`` (default: ``model``) is the
    model the attack computes its images on; ``model`` predicts on them (a
    test-time defense under the non-adaptive threat model).
    """
    return accuracies_under_one_attack({"": model}, loader, spec, num_classes, device, seed=seed, desc=desc,
                                       progress_file=progress_file, observer=observer,
                                       attack_model=attack_model)[""]


def accuracies_under_one_attack(
    models: Dict[str, nn.Module],
    loader: DataLoader,
    spec: AttackSpec,
    num_classes: int,
    device: torch.device,
    seed: int = 0,
    desc: str = "",
    progress_file: Optional[Path] = None,
    observer: Optional[BatchObserver] = None,
    attack_model: Optional[nn.Module] = None,
) -> Dict[str, Outcome]:
    """:func:`accuracy_under_attack` of several predicting models on the same adversarial images.

    The attack runs once per batch, on ``attack_model`` (default: the first
    model); every model of ``models`` then predicts on the clean and the
    attacked images (the run's model and its test-time adaptations, under
    the non-adaptive threat model). ``observer`` follows the first model.
    """
    names = list(models)
    for m in models.values():
        m.eval()
    attacked = models[names[0]] if attack_model is None else attack_model.eval()
    loader = distributed.shard_loader(loader)
    attack = spec.build(attacked, num_classes, seed)
    if attack is not None:
        logger.info("Attack: %r", attack)
    fresh = {"batches": 0, "total": 0, "correct": {n: 0 for n in names}, "seconds": {n: 0.0 for n in names}}
    state = fresh
    if progress_file is not None and progress_file.is_file():
        state = read_json(progress_file)["state"]
        if not isinstance(state.get("correct"), dict):  # one model's file, written before several could share
            state = {**fresh, "batches": state["batches"], "total": state["total"],
                     "correct": {names[0]: state["correct"]}, "seconds": {names[0]: state["seconds"]}}
        logger.info("Resuming %s after %d batches (%d images) from %s",
                    spec.label, state["batches"], state["total"], progress_file)
    bar = progress_bar(loader, total=len(loader), desc=desc or spec.label)
    for index, batch in enumerate(bar):
        if index < state["batches"]:
            continue
        images, labels = batch["img"].to(device), batch["label"].to(device)
        start = time.perf_counter()
        adv = attack(images, labels) if attack is not None else None
        attack_seconds = time.perf_counter() - start
        for position, name in enumerate(names):
            start = time.perf_counter()
            model = models[name]
            watch = observer if position == 0 else None
            with torch.no_grad():
                logits = model(images)
                if watch is not None:
                    watch("clean", labels)
            check_finite_logits(logits, f"clean images, batch {index}")
            correct = logits.argmax(dim=1) == labels
            if adv is not None:
                with torch.no_grad():
                    logits = model(adv)
                    if watch is not None:
                        watch("attacked", labels)
                check_finite_logits(logits, f"{spec.label}, batch {index}")
                correct &= logits.argmax(dim=1) == labels
            state["correct"][name] += int(correct.sum())
            state["seconds"][name] += time.perf_counter() - start + attack_seconds
        state["total"] += int(labels.numel())
        state["batches"] = index + 1
        bar.set_postfix_str(f"acc {100.0 * state['correct'][names[0]] / state['total']:.2f}%", refresh=False)
        if progress_file is not None:
            write_json({"state": state}, progress_file)
    bar.close()
    total = distributed.all_reduce_sum([state["total"]])[0]
    if total == 0:
        raise RuntimeError("The evaluation saw no images: the test split (or subset) is empty")
    extra: Dict[str, Any] = {}
    if attack is not None:
        extra.update(attack_provenance(attack, attacked))
    outcomes = {}
    for name in names:
        correct = distributed.all_reduce_sum([state["correct"][name]])[0]
        seconds = distributed.all_reduce_max(state["seconds"][name])
        outcomes[name] = Outcome(100.0 * correct / total, total, seconds, dict(extra))
    return outcomes


def attack_provenance(attack: Any, model: nn.Module) -> Dict[str, Any]:
    """What a record says of the attack and the threat model (docs/results_format.md)."""
    kinds = part_kinds(model)
    out: Dict[str, Any] = {"library": attack.library, "attack_config": attack.config(), "threat_model": "Linf",
                           "access": attack.access,
                           "adaptive": adaptive_label(kinds, attack.bpda, getattr(attack, "eot_iter", 1)),
                           "test_time_optimisation": "test_time" in kinds}
    parts = declared_parts(model)
    if parts:
        out["model_parts"] = parts
    blocking = [p["path"] for p in parts if p["kind"] == "non_differentiable" and not p.get("forward_is_straight_through")]
    if blocking and not attack.bpda and attack.access != "black-box":
        logger.warning("The model declares non-differentiable parts (%s) and the attack did not go through them "
                       "(add --bpda): this number may overstate robustness", ", ".join(blocking))
    if "random" in kinds and getattr(attack, "eot_iter", 1) <= 1:
        logger.warning("The model declares random parts and the attack used no EOT (add --eot-iter N or use aa-rand)")
    return out
