"""The adversarial CLIP trainer base: APT now, AMPT later.

:class:`AdversarialClipTrainer` adds to :class:`~ampt.clip_trainer.ClipTrainer`:

- the training attack from ``ADV.TRAIN``: APT's L-inf PGD through the whole
  model, exactly as APT's trainer updates it (an unclamped perturbation in
  the eps-ball; only ``x + delta`` is clamped to [0, 1]; see
  :mod:`ampt.attacks.apt_pgd`), with APT's three attack prompts (and
  ``perturbed_rms``, ours);
- the training objective from ``ADV.TRAIN.LOSS`` (:mod:`ampt.losses`: ``ce``,
  ``trades``, ``fap``), which also sets what the attack maximises;
- a training step that runs the text encoder **once**: the prompts' text
  features are computed with gradient, the attack reuses them detached at
  every step, and the loss on the adversarial images uses them again;
- ``final_evaluation()``: clean accuracy and robust accuracy under
  ``ADV.TEST`` (PGD-10 by default), each logged with its own label and
  written to ``results.json`` as its own record.

Subclasses build ``self.model`` (a :class:`~ampt.models.PromptedCLIP` or a
subclass) in ``build_model`` and may override :meth:`adversarial_loss` (extra
loss terms), the evaluation prompt hook (:meth:`eval_prompt_model`) and
:meth:`robust_test_observer` (what to read off the robust test's forwards).

Text-encoder passes per training step: ``onfly`` 1, ``constant`` 1 (the
template's features are computed once, at the first step), ``perturbed`` and
``perturbed_rms`` ``STEPS + 1`` (each attack step encodes the perturbed prompts, then the loss
encodes the restored ones).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from .attacks import ATTACK_REGISTRY, attack_mode, check_eps
from .attacks.apt_pgd import apt_pgd
from .attacks.per_sample import uniform_noise
from .clip_trainer import ClipTrainer
from .engine import distributed
from .errors import UserError
from .evaluated_prompt import prompt_model
from .losses import TrainLoss
from .models.interface import LEARNED, check_attack_prompt
from .precision import at_precision, warn_reduced
from .robust_accuracy import AttackSpec, BatchObserver, accuracy_under_attack

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
        return cls(eps, alpha, steps, node.PROMPT, prompt_alpha)


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
        self.train_loss = TrainLoss.from_cfg(cfg)
        if self.train_loss.needs_clean and self.budget.prompt in PERTURBED_MODES:
            raise UserError(f'ADV.TRAIN.PROMPT "{self.budget.prompt}" attacks with cross-entropy; with ADV.TRAIN.LOSS '
                             f'"{self.train_loss.name}" use PROMPT onfly or constant')
        self.test_attack = test_spec(cfg)

    def setup_model(self, model: nn.Module, trainable: Any) -> nn.Module:
        """:meth:`ClipTrainer.setup_model`, then refuse an ``ADV.TRAIN.PROMPT`` the model does not support."""
        model = super().setup_model(model, trainable)
        check_attack_prompt(model, self.budget.prompt)
        return model

    def run_metadata(self) -> Dict[str, Any]:
        b = TrainBudget.from_cfg(self.cfg)
        return {**super().run_metadata(), "train_alpha": round(b.alpha, 4), "train_steps": b.steps,
                "train_attack_prompt": b.prompt, **TrainLoss.from_cfg(self.cfg).metadata()}

    # ------------------------------------------------------------ training attack
    def constant_text_features(self) -> Tensor:
        """The template's ``[K, C, D]`` features (K identical copies), computed once."""
        cached = getattr(self, "_constant_text_features", None)
        if cached is None:
            cached = self.model.template_features(self.dm.dataset.classnames, self.CONSTANT_TEMPLATE).detach()
            self._constant_text_features = cached
        return cached

    def adversarial_images(self, images: Tensor, labels: Tensor, text_features: Optional[Tensor]) -> Tensor:
        """APT's training PGD (:func:`~ampt.attacks.apt_pgd.apt_pgd`) through the whole model.

        ``onfly``: every step reuses ``text_features`` (the current prompts'),
        detached, so the attack adds no text-encoder pass. ``constant``: the
        template's features. ``perturbed`` / ``perturbed_rms``: see
        :meth:`_perturbed_attack`. The model is in eval mode during the
        attack and restored after.
        """
        b = self.budget
        if b.prompt in PERTURBED_MODES:
            return self._perturbed_attack(images, labels)
        if b.prompt == "constant":
            fixed = self.constant_text_features()
        else:
            if text_features is None:
                raise ValueError('the "onfly" attack needs the current text features')
            fixed = text_features.detach()
        with attack_mode(self.model):
            forward = lambda x: self.model(x, text_features=fixed)  # noqa: E731
            clean = None
            if self.train_loss.needs_clean:
                with torch.no_grad():
                    clean = forward(images)
            loss = self.train_loss.attack_loss(clean) if self.train_loss.needs_clean else None  # None: APT's mean CE
            return apt_pgd(forward, images, labels, b.eps / 255, b.alpha / 255, b.steps,
                           delta=self.attack_start(images), loss=loss)

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

    def _perturbed_attack(self, images: Tensor, labels: Tensor) -> Tensor:
        """APT's PGD on the images while the prompts ascend the same loss, then restored.

        At each step the same loss (mean cross-entropy) gives both gradients:
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
                               params=params, param_step=prompt_step)
        finally:
            with torch.no_grad():
                for p, value in zip(params, saved):
                    p.copy_(value)

    # ------------------------------------------------------------ training step
    def adversarial_loss(self, logits: Tensor, labels: Tensor, images: Tensor, adv_images: Tensor,
                         text_features: Tensor, adv_features: Optional[Tensor] = None
                         ) -> Tuple[Tensor, Dict[str, float]]:
        """``ADV.TRAIN.LOSS`` on the adversarial ``logits`` (and the clean images' when it needs them).

        Subclasses add terms (AMPT: clean CE, TRADES KL, router balance);
        ``text_features`` (with gradient) let them do so without another
        text pass; ``adv_features`` are the adversarial images' features.
        """
        if not self.train_loss.needs_clean:
            return self.train_loss.outer(logits, labels)
        clean_features = self.model.encode_image(images)
        clean_logits = self.model.combine(clean_features, text_features)
        return self.train_loss.outer(logits, labels, clean_logits, clean_features, adv_features)

    def forward_backward(self, batch: Dict[str, Any]) -> Dict[str, float]:
        images, labels = self.parse_batch_train(batch)[:2]
        self.batch_indices = batch.get("index")  # dataset indices: seeds of the per-image attack start
        with self.autocast():
            if self.budget.prompt in PERTURBED_MODES:
                adv = self.adversarial_images(images, labels, None)
                text_features = self.model.text_features()
            else:
                text_features = self.model.text_features()  # the step's only text-encoder pass
                adv = self.adversarial_images(images, labels, text_features)
            adv_features = self.model.encode_image(adv)
            logits = self.model.combine(adv_features, text_features)
            loss, extra = self.adversarial_loss(logits, labels, images, adv, text_features, adv_features)
        self.model_backward_and_update(loss)
        summary = {"loss": loss.item(), "adv_acc": 100.0 * (logits.argmax(1) == labels).float().mean().item(),
                   **extra}
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary

    def before_train(self) -> None:
        """Check the configured robust test against the task before any epoch runs."""
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
        extra = {"label": spec.label, "attack_prompt": LEARNED, "seconds": round(outcome.seconds, 2), "seed": seed}
        if spec.alpha is not None:
            extra["alpha"] = round(spec.alpha, 4)
        self.record_result(split, spec.name, spec.eps, spec.steps, outcome.n_samples, outcome.accuracy, **extra)
