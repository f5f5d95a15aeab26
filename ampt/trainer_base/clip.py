"""``ClipTrainer``: the ``TrainerX`` base of every CLIP trainer (``trainers/*.py``).

What it adds to Dassl's ``TrainerX``:

- config checks: no pixel normalization in the data pipeline (the model
  normalizes; attacks work on [0, 1] pixels), and ``INPUT.SIZE`` equal to the
  backbone's input resolution;
- :meth:`load_clip_model`: CLIP (``clip`` or open_clip) from ``MODEL.BACKBONE.{NAME,
  PRETRAINED, ROBUST_WEIGHTS, DOWNLOAD_ROOT}`` with the trainer's precision (``TRAINER.<node>.PREC``);
- :meth:`setup_model`: freeze everything but an allow-list of parameter
  names, log what trains, refuse anything else that requires grad, set the
  text pass's options (``MODEL.TEXT_ENCODER``), move to the device;
- precision (:mod:`ampt.precision`): the weights stay fp32; ``TRAINER.<X>.PREC``
  ``bf16``/``fp16`` autocasts the training passes (fp16 with a gradient
  scaler, in ``model_backward_and_update``); the run's own tests use
  ``TEST.PRECISION`` (fp32 by default) in ``model_inference``.

A subclass implements ``add_config``, ``build_model``
and ``forward_backward``, running its forward passes under ``self.autocast()``.
"""
from __future__ import annotations

import logging
from typing import Any, ContextManager, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..api import TrainerX
from .. import precision as precision_policy
from ..engine.checkpoint import load_checkpoint
from ..errors import UserError
from ..finite import check_finite_logits, check_finite_weights
from ..models.backbone import backbone_info, pretrained_setting
from ..models.clip_loader import load_clip
from ..models.interface import check_prompt_model
from ..models.text_encoder import TextPassOptions, configure_text_encoders
from ..objectives import FrozenZeroShot
from ..optim import build_lr_scheduler, build_optimizer
from ..utils import distributed

logger = logging.getLogger(__name__)

PIXEL_CHANGING_TRANSFORMS = ("normalize", "instance_norm")


def check_clip_transforms(cfg: Any) -> None:
    """Refuse transforms that move pixels out of [0, 1]: CLIP trainers normalize inside the model."""
    bad = [t for t in cfg.INPUT.TRANSFORMS if t in PIXEL_CHANGING_TRANSFORMS]
    if bad:
        kept = [t for t in cfg.INPUT.TRANSFORMS if t not in PIXEL_CHANGING_TRANSFORMS]
        raise UserError(
            f"INPUT.TRANSFORMS lists {bad}: remove it (e.g. INPUT.TRANSFORMS {kept}). CLIP trainers "
            "normalize with CLIP's mean/std inside the model, and attacks assume pixels in [0, 1] "
            "(eps in 1/255 units). CoOp/APT configs list \"normalize\"; this toolkit's must not."
        )


def check_input_size(cfg: Any, resolution: int) -> None:
    """``INPUT.SIZE`` must be the backbone's square input resolution."""
    size = tuple(int(s) for s in cfg.INPUT.SIZE)
    if size != (resolution, resolution):
        raise UserError(
            f"INPUT.SIZE {size} does not match the input resolution of the backbone "
            f"{cfg.MODEL.BACKBONE.NAME!r} ({resolution} x {resolution} px). "
            f"Set INPUT.SIZE ({resolution}, {resolution})."
        )


def _matches(name: str, allowed: str) -> bool:
    allowed = allowed.rstrip(".")
    return name == allowed or name.startswith(allowed + ".")


class ClipTrainer(TrainerX):
    """Base trainer for CLIP models; see the module docstring."""

    cfg_node: str = ""  # the trainer's node under TRAINER, read for PREC; "" = the class name upper-cased
    # Named --prompt modes of evaluate.py handled by eval_prompt_model ("learned" and templates are built in).
    eval_prompt_modes: Tuple[str, ...] = ()
    # Config nodes read as another (old dotted node -> new), e.g. {"TRAINER.COOP": "TRAINER.APT"}; see ampt.config.aliases
    config_aliases: Dict[str, str] = {}

    # ------------------------------------------------------------ config
    def check_cfg(self, cfg: Any) -> None:
        super().check_cfg(cfg)
        check_clip_transforms(cfg)
        precision_policy.check_eval_precision(cfg.TEST.get("PRECISION", "fp32"), "TEST.PRECISION")

    def trainer_cfg(self) -> Optional[Any]:
        """``cfg.TRAINER.<cfg_node>`` (e.g. ``TRAINER.COOP``), or None when the config has no such node."""
        return self.cfg.TRAINER.get(self.cfg_node or type(self).__name__.upper())

    @property
    def classnames(self) -> List[str]:
        return list(self.dm.dataset.classnames)

    def frozen_zero_shot(self) -> FrozenZeroShot:
        """The frozen backbone's zero-shot classifier that loss terms compare with
        (``ADV.OBJECTIVE.ZERO_SHOT_TEMPLATE``), built once per run."""
        cached = getattr(self, "_frozen_zero_shot", None)
        if cached is None:
            cached = self._frozen_zero_shot = FrozenZeroShot.from_cfg(self.model, self.classnames, self.cfg)
        return cached

    # ------------------------------------------------------------ model
    def load_clip_model(self) -> nn.Module:
        """CLIP on the trainer's device and precision, after checking ``INPUT.SIZE``.

        On the device already, so fixed text features and prompt buffers are computed there.
        """
        backbone = self.cfg.MODEL.BACKBONE
        logger.info("Loading CLIP (backbone: %s)", backbone.NAME)
        clip_model = load_clip(backbone.NAME, backbone.ROBUST_WEIGHTS, backbone.DOWNLOAD_ROOT, device=self.device,
                               pretrained=pretrained_setting(backbone))
        check_input_size(self.cfg, backbone_info(clip_model).input_resolution)
        node = self.trainer_cfg()
        requested = node.PREC if node is not None and "PREC" in node else "fp32"
        self.precision = precision_policy.resolve_train_precision(requested, self.device)
        logger.info("Precision: training %s (weights and learned parameters fp32), tests %s",
                    self.precision, self.test_precision())
        self.scaler = precision_policy.grad_scaler(self.precision, self.device)
        return clip_model.float()

    def setup_model(self, model: nn.Module, trainable: Sequence[str]) -> nn.Module:
        """Freeze all of ``model`` but ``trainable`` (parameter names or module prefixes).

        Checks that ``model`` implements :class:`~ampt.models.interface.PromptModel`,
        logs the trainable names and counts, raises if an allow-list entry
        matches nothing, and moves the model to the device.
        """
        check_prompt_model(model)
        self._trainable = tuple(trainable)
        for name, param in model.named_parameters():
            param.requires_grad_(any(_matches(name, allowed) for allowed in self._trainable))
        names = self.check_trainable(model)
        shapes = {n: list(p.shape) for n, p in model.named_parameters() if n in names}
        count = sum(p.numel() for n, p in model.named_parameters() if n in names)
        logger.info("Trainable parameters (%d tensors, %d values): %s", len(names), count,
                    ", ".join(f"{n} {shapes[n]}" for n in names) or "none")
        configure_text_encoders(model, TextPassOptions.from_cfg(self.cfg))
        return model.to(self.device)

    def install_model(self, model: nn.Module, trainable: Sequence[str], learned: str = "prompt_learner",
                      more_learned: Optional[Dict[str, Any]] = None) -> None:
        """The end of every ``build_model``: ``self.model`` set up, and what it learns registered.

        :meth:`setup_model` freezes all but ``trainable``; ``MODEL.INIT_WEIGHTS``
        is loaded into ``model.<learned>``; then ``model.<learned>`` is
        registered as ``learned`` with an optimizer and LR schedule from
        ``OPTIM`` (also ``self.optim``, ``self.sched``), and each
        ``model.<name>`` of ``more_learned`` as ``name`` with its own ``OPTIM``
        node. Every registered name is a folder of the run's checkpoints.
        """
        cfg = self.cfg
        self.model = self.setup_model(model, trainable=trainable)
        if cfg.MODEL.INIT_WEIGHTS:
            self.load_init_weights(getattr(self.model, learned), cfg.MODEL.INIT_WEIGHTS)
        for name, optim_cfg in {learned: cfg.OPTIM, **(more_learned or {})}.items():
            module = getattr(self.model, name)
            optim = build_optimizer(module, optim_cfg)
            sched = build_lr_scheduler(optim, optim_cfg)
            self.register_model(name, module, optim, sched)
            if name == learned:
                self.optim, self.sched = optim, sched

    def check_trainable(self, model: Optional[nn.Module] = None) -> List[str]:
        """Names of the parameters that require grad; raises unless they are exactly the allow-list's."""
        model = self.model if model is None else model
        allowed = getattr(self, "_trainable", ())
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        extra = [n for n in names if not any(_matches(n, a) for a in allowed)]
        if extra:
            raise RuntimeError(
                f"Parameters outside the allow-list {list(allowed)} require grad: {extra}. "
                "Only the prompts (and a trainer's own modules) may train; CLIP stays frozen."
            )
        unmatched = [a for a in allowed if not any(_matches(n, a) for n, _ in model.named_parameters())]
        if unmatched:
            raise RuntimeError(f"Allow-list entries {unmatched} name no parameter of {type(model).__name__}")
        return names

    def load_init_weights(self, module: nn.Module, path: str) -> None:
        """``MODEL.INIT_WEIGHTS``: strict load of a checkpoint (or bare state dict) into ``module``."""
        checkpoint = load_checkpoint(path)
        state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
        module.load_state_dict(state_dict)
        logger.info("Initial weights of %s loaded from %s", type(module).__name__, path)

    # ------------------------------------------------------------ evaluation hooks
    def eval_prompt_model(self, prompt: str) -> Optional[nn.Module]:
        """Hook of ``evaluate.py --prompt``: the module for a named mode, or None (not handled here).

        Subclasses list their modes in ``eval_prompt_modes`` and build them
        here (AMPT: "uniform"); "learned" and templates are built by
        :func:`ampt.evaluation.evaluated_prompt.prompt_model`.
        """
        return None

    def record_result(self, *args: Any, **extra: Any) -> None:
        """A record whose ``prompt`` is the model's own label ("learned", or a zero-shot template)."""
        extra.setdefault("prompt", self.model.prompt_label())
        super().record_result(*args, **extra)

    # ------------------------------------------------------------ precision-aware hooks
    def autocast(self) -> ContextManager:
        """Autocast of the training passes (``TRAINER.<X>.PREC`` bf16 or fp16); a no-op for fp32."""
        return precision_policy.autocast(getattr(self, "precision", "fp32"), self.device)

    def model_inference(self, input: torch.Tensor) -> torch.Tensor:
        """Logits in fp32, computed at the tests' precision (``TEST.PRECISION``, fp32 by default)."""
        with precision_policy.autocast(self.test_precision(), self.device):
            logits = self.model(input).float()
        check_finite_logits(logits, "test")
        return logits

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """The engine's ``load_model``, then a refusal of NaN / Inf weights (see :mod:`ampt.finite`)."""
        super().load_model(directory, epoch=epoch)
        for name in self.get_model_names():
            check_finite_weights(self._models[name], f"{directory}/{name} (epoch {epoch if epoch else 'latest'})")

    def model_backward_and_update(
        self, loss: torch.Tensor, names: Union[None, str, Sequence[str]] = None
    ) -> None:
        """Zero grad, backward, step; through the gradient scaler under ``amp``.

        The scaled path averages the gradients over torchrun ranks itself
        (:func:`ampt.utils.distributed.average_gradients`): it may use only
        what both engines define, and Dassl's ``TrainerX`` has no ``sync_gradients``.
        """
        if getattr(self, "scaler", None) is None:
            super().model_backward_and_update(loss, names)
            return
        self.model_zero_grad(names)
        self.detect_anomaly(loss)
        self.scaler.scale(loss).backward()
        distributed.average_gradients(p for name in self.get_model_names(names)
                                      for p in self._models[name].parameters())
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self.scaler.step(self._optims[name])
        self.scaler.update()

    def parse_batch_train(self, batch: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(images in [0, 1], labels)`` on the device (CoOp's signature)."""
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def before_train(self) -> None:
        if hasattr(self, "_trainable"):
            self.check_trainable()
        for name in self.get_model_names():
            precision_policy.check_fp32_parameters(self._models[name])
        super().before_train()
