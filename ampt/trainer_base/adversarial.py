"""The adversarial CLIP trainer base of APT, AMPT and the FAP family.

:class:`AdversarialClipTrainer` adds to :class:`~ampt.trainer_base.clip.ClipTrainer`:

- the training attack from ``ADV.TRAIN``: APT's L-inf PGD through the whole
  model, exactly as APT's trainer updates it (an unclamped perturbation in
  the eps-ball; only ``x + delta`` is clamped to [0, 1]; see
  :mod:`ampt.attacks.apt_pgd`), with APT's three attack prompts (and
  ``perturbed_rms``, ours);
- the training objective from ``ADV.TRAIN.LOSS`` (:mod:`ampt.objectives`: a
  registered term such as ``ce``, ``trades``, ``fap``, or a weighted sum such
  as ``fap+0.5*zs_kl``), whose ``ADV.TRAIN.ATTACK_LOSS`` term (default: the
  first) sets what the attack maximises; each step's tensors are a
  :class:`~ampt.objectives.TrainingStep` the terms read;
- a training step that runs the text encoder **once**: the prompts' text
  features are computed with gradient, the attack reuses them detached at
  every step, and the loss on the adversarial images uses them again;
- ``final_evaluation()``: clean accuracy and robust accuracy under
  ``ADV.TEST`` (PGD-10 by default), each logged with its own label and
  written to ``results.json`` as its own record.

Subclasses build ``self.model`` (a :class:`~ampt.models.PromptedCLIP` or a
subclass) in ``build_model`` and may override :meth:`objective_terms` (terms
their own weight keys add to ``ADV.TRAIN.LOSS``), :meth:`observe_step` (what
to read off each training step), the evaluation prompt hook
(:meth:`eval_prompt_model`) and :meth:`robust_test_observer` (what to read
off the robust test's forwards). A new loss term is a registered objective
(:mod:`ampt.objectives`), not a subclass.

Text-encoder passes per training step: ``onfly`` 1, ``constant`` 1 (the
template's features are computed once, at the first step), ``perturbed`` and
``perturbed_rms`` ``STEPS + 1`` (each attack step encodes the perturbed prompts, then the loss
encodes the restored ones).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..attacks import ATTACK_REGISTRY, attack_mode, check_eps
from ..attacks.apt_pgd import PROJECTIONS, apt_pgd
from ..attacks.per_sample import uniform_noise
from ..trainer_base.clip import ClipTrainer
from ..utils import distributed
from ..errors import UserError
from ..evaluation.evaluated_prompt import prompt_model
from ..models.interface import LEARNED, check_attack_prompt
from ..objectives import TrainingObjective, TrainingStep, check_inner_differentiable
from ..precision import at_precision, warn_reduced
from ..evaluation.robust_accuracy import AttackSpec, BatchObserver, accuracy_under_attack

logger = logging.getLogger(__name__)

APT_CONSTANT_TEMPLATE = "a photo of a {}"

PROMPT_MODES = ("onfly", "constant", "perturbed", "perturbed_rms")
# Modes whose attack also moves the prompts (APT's plain gradient step; ours, RMS-scaled sign step).
PERTURBED_MODES = ("perturbed", "perturbed_rms")


@dataclass(frozen=True)
class TrainBudget:
    """The training attack; ``eps``/``alpha`` in 1/255 units."""

    eps: float
    alpha: float
    steps: int
    prompt: str
    prompt_alpha: float
    projection: str = "apt"

    @classmethod
    def from_cfg(cls, cfg: Any) -> "TrainBudget":
        node = cfg.ADV.TRAIN
        eps = check_eps(node.EPS, "ADV.TRAIN.EPS")
        alpha = 2.0 * eps / 3.0 if float(node.ALPHA) == -1 else float(node.ALPHA)
        if alpha < 0 or alpha > 255:
            raise UserError(f"ADV.TRAIN.ALPHA must be -1 (2/3 EPS) or in [0, 255] in 1/255 units (got {node.ALPHA})")
        steps = int(node.STEPS)
        if steps < 1 and eps > 0:
            raise UserError(f"ADV.TRAIN.STEPS must be >= 1 (got {steps}); ADV.TRAIN.EPS 0 trains on clean images")
        if node.PROMPT not in PROMPT_MODES:
            raise UserError(f'ADV.TRAIN.PROMPT "{node.PROMPT}" is not one of {", ".join(PROMPT_MODES)}')
        prompt_alpha = float(node.PROMPT_ALPHA)
        if prompt_alpha < 0:
            raise UserError(f"ADV.TRAIN.PROMPT_ALPHA must be >= 0 (got {prompt_alpha})")
        if node.PROJECTION not in PROJECTIONS:
            raise UserError(f'ADV.TRAIN.PROJECTION "{node.PROJECTION}" is not one of {", ".join(PROJECTIONS)} '
                            "(apt: APT's trainer, for APT and AMPT; fap: FAP's attack/pgd.py, for the FAP family)")
        return cls(eps, alpha, steps, node.PROMPT, prompt_alpha, node.PROJECTION)


def test_spec(cfg: Any) -> Optional[AttackSpec]:
    """The in-training robust test from ``ADV.TEST`` (None when ``ATTACK`` is "")."""
    node = cfg.ADV.TEST
    if not node.ATTACK:
        return None
    ATTACK_REGISTRY.get(node.ATTACK)
    eps = float(cfg.ADV.TRAIN.EPS) if float(node.EPS) == -1 else float(node.EPS)
    alpha = None if float(node.ALPHA) == -1 else float(node.ALPHA)
    if int(node.STEPS) < 0:
        raise UserError(f"ADV.TEST.STEPS must be >= 0 (got {node.STEPS})")
    return AttackSpec(node.ATTACK, eps=check_eps(eps, "ADV.TEST.EPS"), steps=int(node.STEPS), alpha=alpha)


class AdversarialClipTrainer(ClipTrainer):
    """A CLIP prompt trainer whose loss is computed on adversarial images."""

    adversarial = True
    # Template of the "constant" attack prompt: APT's, without the final period of DEFAULT_TEMPLATE.
    CONSTANT_TEMPLATE = APT_CONSTANT_TEMPLATE

    def check_cfg(self, cfg: Any) -> None:
        super().check_cfg(cfg)
        self.budget = TrainBudget.from_cfg(cfg)
        self.objective = self.build_objective(cfg)
        if self.objective.attack_needs_clean and self.budget.prompt in PERTURBED_MODES:
            raise UserError(f'ADV.TRAIN.PROMPT "{self.budget.prompt}" moves the prompts during the attack, which the '
                             f'attack loss "{self.objective.attack_name}" (it reads the clean prediction) does not '
                             'support: use PROMPT onfly or constant, or ADV.TRAIN.ATTACK_LOSS ce')
        self.test_attack = test_spec(cfg)

    def objective_terms(self, cfg: Any) -> Sequence[Tuple[str, float]]:
        """Hook: ``(term, weight)`` pairs the trainer's own keys add after ``ADV.TRAIN.LOSS``'s (default: none)."""
        return ()

    def build_objective(self, cfg: Any) -> TrainingObjective:
        """``ADV.TRAIN.LOSS`` plus :meth:`objective_terms`, with ``ADV.TRAIN.ATTACK_LOSS``."""
        return TrainingObjective(cfg, extra=self.objective_terms(cfg))

    def setup_model(self, model: nn.Module, trainable: Any) -> nn.Module:
        """:meth:`ClipTrainer.setup_model`, then refuse an ``ADV.TRAIN.PROMPT`` or a loss term the model does not support."""
        model = super().setup_model(model, trainable)
        check_attack_prompt(model, self.budget.prompt)
        self.objective.check_model(model)
        return model

    def run_metadata(self) -> Dict[str, Any]:
        b = self.budget
        return {**super().run_metadata(), "train_alpha": round(b.alpha, 4), "train_steps": b.steps,
                "train_attack_prompt": b.prompt, "train_projection": b.projection, **self.objective.metadata()}

    # ------------------------------------------------------------ training attack
    def constant_text_features(self) -> Tensor:
        """The template's ``[K, C, D]`` features (K identical copies), computed once."""
        cached = getattr(self, "_constant_text_features", None)
        if cached is None:
            cached = self.model.template_features(self.dm.dataset.classnames, self.CONSTANT_TEMPLATE).detach()
            self._constant_text_features = cached
        return cached

    def training_step(self, images: Tensor, labels: Tensor) -> TrainingStep:
        """A new :class:`~ampt.objectives.TrainingStep` of this batch (the attack and the loss fill it)."""
        return TrainingStep(self.model, images, labels, zero_shot=self.frozen_zero_shot())

    # The step being trained, read by adversarial_images (whose signature subclasses and tests share).
    current_step: Optional[TrainingStep] = None

    def adversarial_images(self, images: Tensor, labels: Tensor, text_features: Optional[Tensor]) -> Tensor:
        """APT's training PGD (:func:`~ampt.attacks.apt_pgd.apt_pgd`) through the whole model.

        It maximises the objective's attack loss (``ADV.TRAIN.ATTACK_LOSS``).
        ``onfly``: every step reuses ``text_features`` (the current prompts'),
        detached, so the attack adds no text-encoder pass. ``constant``: the
        template's features. ``perturbed`` / ``perturbed_rms``: see
        :meth:`_perturbed_attack`. The model is in eval mode during the
        attack and restored after.
        """
        b = self.budget
        step = self.current_step or self.training_step(images, labels)
        if b.prompt in PERTURBED_MODES:
            return self._perturbed_attack(images, labels, step)
        if b.prompt == "constant":
            fixed = self.constant_text_features()
        else:
            if text_features is None:
                raise ValueError('the "onfly" attack needs the current text features')
            fixed = text_features.detach()
        with attack_mode(self.model):
            step.attack_forward = lambda x: self.model(x, text_features=fixed)
            try:
                loss = self.objective.inner(step)
                return apt_pgd(step.attack_forward, images, labels, b.eps / 255, b.alpha / 255, b.steps,
                               delta=self.attack_start(images), loss=loss, projection=b.projection)
            finally:
                step.attack_forward = None

    def attack_start(self, images: Tensor) -> Optional[Tensor]:
        """The training attack's initial perturbation: None (drawn from the global RNG) in one process.

        Under torchrun each image's perturbation is drawn from its own generator,
        seeded by (SEED, epoch, dataset index) of the batch being trained
        (``self.batch_indices``), so it does not depend on how many
        processes share the batch, and ranks never repeat each other's noise.
        """
        indices = getattr(self, "batch_indices", None)
        if not distributed.is_distributed() or indices is None or self.budget.eps == 0:
            return None
        seed = max(int(self.cfg.SEED), 0)
        seeds = [distributed.sample_seed(seed, self.epoch, int(i)) for i in indices]
        return uniform_noise(images, self.budget.eps / 255, seeds)

    def _perturbed_attack(self, images: Tensor, labels: Tensor, step: TrainingStep) -> Tensor:
        """APT's PGD on the images while the prompts ascend the same loss, then restored.

        At each step the same loss (the attack loss, a cross-entropy for APT) gives both gradients:
        the images take APT's step, and every prompt parameter ``p`` takes a
        step up the loss: ``perturbed`` (APT) a plain gradient step
        ``p + PROMPT_ALPHA * grad``; ``perturbed_rms`` (ours) a sign step of
        ``PROMPT_ALPHA * RMS(p)`` (RMS at the start of the attack). The
        moving prompt is accumulated in fp32 and copied into the parameters,
        so small steps are not lost to fp16 rounding. Each step encodes the
        perturbed prompts (``STEPS`` text passes).
        """
        b = self.budget
        params = [p for p in self.model.prompt_parameters() if p.requires_grad]
        saved = [p.detach().clone() for p in params]
        moving = [p.detach().float().clone() for p in params]
        rms_scales = [b.prompt_alpha * m.pow(2).mean().sqrt() for m in moving]

        def prompt_step(grads) -> None:
            with torch.no_grad():
                for p, m, g, scale in zip(params, moving, grads, rms_scales):
                    if b.prompt == "perturbed":
                        m.add_(g.float(), alpha=b.prompt_alpha)
                    else:
                        m.add_(scale * g.float().sign())
                    p.copy_(m)

        try:
            with attack_mode(self.model):
                for p in params:
                    p.requires_grad_(True)
                return apt_pgd(lambda x: self.model(x, text_features=self.model.text_features()), images, labels,
                               b.eps / 255, b.alpha / 255, b.steps, delta=self.attack_start(images),
                               params=params, param_step=prompt_step, loss=self.objective.inner(step),
                               projection=b.projection)
        finally:
            with torch.no_grad():
                for p, value in zip(params, saved):
                    p.copy_(value)

    # ------------------------------------------------------------ training step
    def observe_step(self, step: TrainingStep) -> Dict[str, float]:
        """Hook: read the finished step (AMPT: its router weights); returns scalars to log (default: none)."""
        return {}

    def forward_backward(self, batch: Dict[str, Any]) -> Dict[str, float]:
        images, labels = self.parse_batch_train(batch)[:2]
        self.batch_indices = batch.get("index")  # dataset indices: seeds of the per-image attack start
        with self.autocast():
            step = self.current_step = self.training_step(images, labels)
            try:
                if self.budget.prompt in PERTURBED_MODES:
                    adv = self.adversarial_images(images, labels, None)
                    text_features = self.model.text_features()
                else:
                    text_features = self.model.text_features()  # the step's only text-encoder pass
                    adv = self.adversarial_images(images, labels, text_features)
            finally:
                self.current_step = None
            step.text_features, step.adv_images = text_features, adv
            step.adv_features = self.model.encode_image(adv)
            step.adv_logits = self.model.combine(step.adv_features, text_features)
            step.adv_router_weights = self.model.router_weights()  # of this forward, before any other
            step.adv_outputs = self.model.latest_outputs()
            loss, extra = self.objective.loss(step)
            extra.update(self.observe_step(step))
        self.model_backward_and_update(loss)
        summary = {"loss": loss.item(), "adv_acc": 100.0 * (step.adv_logits.argmax(1) == labels).float().mean().item(),
                   **extra}
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary

    def check_attack_loss(self) -> None:
        """Refuse, before any epoch, an attack loss whose gradient w.r.t. the image is missing or zero.

        A probe of two random images at the input size goes through the
        model in eval mode with its current text features.
        """
        size = tuple(int(s) for s in self.cfg.INPUT.SIZE)
        generator = torch.Generator().manual_seed(0)
        probe = torch.rand(2, 3, *size, generator=generator).to(self.device)
        labels = torch.tensor([0, min(1, self.num_classes - 1)], device=self.device)
        step = self.training_step(probe, labels)
        with attack_mode(self.model), torch.random.fork_rng(devices=[]):
            with torch.no_grad():
                fixed = self.model.text_features().detach()
            step.attack_forward = lambda x: self.model(x, text_features=fixed)
            check_inner_differentiable(self.objective, step)

    def before_train(self) -> None:
        """Check the attack loss, and the configured robust test against the task, before any epoch runs."""
        if self.budget.eps > 0:
            self.check_attack_loss()
        spec = self.test_attack
        if spec is not None:
            try:
                ATTACK_REGISTRY.get(spec.name).check_num_classes(self.num_classes)
            except UserError as err:
                raise UserError(f"ADV.TEST.ATTACK {spec.name} cannot test {self.cfg.DATASET.NAME}: {err}") from None
        super().before_train()

    # ------------------------------------------------------------ evaluation
    def robust_test_observer(self) -> Optional[BatchObserver]:
        """Hook: an observer of the final robust test's clean and attacked forwards, or None."""
        return None

    def final_test_split(self) -> Tuple[str, Any]:
        """The split of the final tests (``TEST.SPLIT val`` when there is a val loader, else test) and its loader."""
        if self.cfg.TEST.SPLIT == "val" and self.val_loader is not None:
            return "val", self.val_loader
        return "test", self.test_loader

    def routing_test_stats(self, log: Any) -> Dict[str, Any]:
        """The router's (or gates') statistics on the final test split, from ``log`` (a
        :class:`~ampt.models.router_stats.TestWeightLog` that observed the robust test); without an
        ``ADV.TEST`` attack, a clean pass fills it. Every rank's shard is gathered."""
        from ..evaluation.robust_accuracy import CLEAN
        from ..models.router_stats import eval_split_stats

        split, loader = self.final_test_split()
        if not log.labels:
            self.set_model_mode("eval")
            accuracy_under_attack(prompt_model(self, LEARNED), loader, AttackSpec(CLEAN), self.num_classes,
                                  self.device, observer=log)
        parts = distributed.all_gather_objects(log.tensors())
        clean, attacked, labels = (None if p[0] is None else torch.cat(p) for p in zip(*parts))
        return {"split": split, "attack": self.test_attack.label if self.test_attack else None,
                **eval_split_stats(clean, attacked, labels)}

    def final_evaluation(self) -> None:
        """Clean accuracy (the engine's test), then robust accuracy under ``ADV.TEST``; both recorded."""
        split, loader = self.final_test_split()
        clean = self.test(split)
        n_clean = self.evaluator.total
        self.record_result(split, "clean", 0, 0, n_clean, clean, label="clean accuracy")
        logger.info("clean accuracy: %.2f%% (%d images)", clean, n_clean)
        spec = self.test_attack
        if spec is None:
            return
        self.set_model_mode("eval")
        warn_reduced(self.test_precision())
        model = at_precision(prompt_model(self, LEARNED), self.test_precision())
        seed = self.cfg.SEED if self.cfg.SEED >= 0 else 0
        outcome = accuracy_under_attack(model, loader, spec, self.num_classes, self.device, seed=seed,
                                        desc=f"test ({split}): {spec.label}", observer=self.robust_test_observer())
        logger.info("%s: %.2f%% (%d images, %.1f s)", spec.label, outcome.accuracy, outcome.n_samples, outcome.seconds)
        self.write_scalar(f"{split}/robust_accuracy", outcome.accuracy, self.epoch)
        extra = {"label": spec.label, "column": spec.column, "attack_prompt": LEARNED,
                 "seconds": round(outcome.seconds, 2), "seed": seed, **outcome.extra}
        if spec.alpha is not None:
            extra["alpha"] = round(spec.alpha, 4)
        self.record_result(split, spec.name, spec.eps, spec.steps, outcome.n_samples, outcome.accuracy, **extra)
