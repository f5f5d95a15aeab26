"""Zero-shot CLIP: one hand-written prompt per dataset, no training (CoOp's ``ZeroshotCLIP``).

Run it with ``--eval-only`` (as CoOp's scripts do) or as a normal run, whose
``train()`` goes straight to the final test. The model is a
:class:`~ampt.models.FixedPromptCLIP`, so ``evaluate.py`` attacks it like any
learned-prompt model.
"""
from __future__ import annotations

import logging
from typing import Any, Dict

from yacs.config import CfgNode as CN

from ampt.api import TRAINER_REGISTRY
from ampt.trainer_base.clip import ClipTrainer
from ampt.models import FixedPromptCLIP
from ampt.models.templates import check_template, get_template
from ampt.precision import add_precision_key

logger = logging.getLogger(__name__)


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(ClipTrainer):
    """CLIP with the dataset's template from CoOp (``ampt.models.templates``)."""

    @staticmethod
    def add_config(cfg: CN) -> None:
        cfg.TRAINER.ZEROSHOTCLIP = CN()
        # prompt with one "{}" for the class name; "" = the dataset's CoOp template ("a photo of a {}." if none)
        cfg.TRAINER.ZEROSHOTCLIP.TEMPLATE = ""
        add_precision_key(cfg.TRAINER.ZEROSHOTCLIP)  # kept for configs that set it; nothing is trained

    def build_model(self) -> None:
        clip_model = self.load_clip_model()
        template = self.trainer_cfg().TEMPLATE or get_template(self.cfg.DATASET.NAME)
        self.template = check_template(template)
        names = [name.replace("_", " ") for name in self.classnames]
        logger.info('Prompt template: "%s" (e.g. "%s")', self.template, self.template.format(names[0]))
        model = FixedPromptCLIP(clip_model, self.classnames, self.template)
        self.model = self.setup_model(model, trainable=()).eval()

    def train(self) -> None:
        """No epochs: the engine's before/after-train steps, i.e. the final test and results.json."""
        self.start_epoch = self.max_epoch = 0
        super().train()

    def forward_backward(self, batch: Dict[str, Any]) -> Dict[str, float]:
        raise RuntimeError("ZeroshotCLIP has nothing to train")
