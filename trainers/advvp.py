"""AdvVP: adversarial visual prompting (TeCoA's visual prompt, Mao et al., ICLR 2023), as FAP's code
ships it (lionel-w2/FAP, ``trainers/zsrobust.py``, ``zsrobust/models/prompters.py``).

The text side is the dataset's hand-written template, frozen (its features
computed once). The image side learns a prompt: a frame of PAD_SIZE pixels
added to the normalized image (FAP's ``PadPrompter``) and N_TOKENS tokens
appended to the image tokens at the input of the first block (FAP's
``TokenPrompter``, zero positional embedding), both from N(0, 1). Trained with
``ADV.TRAIN.LOSS`` (default ``ce``). Records of the learned prompt read
``learned``: the template is not what was trained.

Evaluation (``EVAL_FRAME``): by default the model that is attacked and scored
is the trained one, frame included. FAP's ``test()`` attacks through the
frame but scores the clean and attacked images without it (zsrobust.py lines
258-272); ``EVAL_FRAME False`` evaluates that way
(:class:`~ampt.models.FrameUnderAttackOnly`), to reproduce FAP's AdvVP
numbers. docs/method.md section 2 (the FAP family) gives the reason for the default.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import torch
from torch import nn
from yacs.config import CfgNode as CN

from ampt import precision as precision_policy
from ampt.trainer_base.adversarial import AdversarialClipTrainer
from ampt.api import TRAINER_REGISTRY
from ampt.finite import check_finite_logits
from ampt.models import FrameUnderAttackOnly, LEARNED, VisualPrompt, VisualPromptCLIP
from ampt.models.clip_loader import clip
from ampt.models.templates import check_template, get_template
from ampt.precision import add_precision_key
from ampt.errors import UserError

logger = logging.getLogger(__name__)


@TRAINER_REGISTRY.register()
class AdvVP(AdversarialClipTrainer):
    """Adversarial visual prompt: learned pixel frame + image tokens, frozen text template."""

    cfg_node = "ADVVP"

    @staticmethod
    def add_config(cfg: CN) -> None:
        cfg.TRAINER.ADVVP = CN()
        cfg.TRAINER.ADVVP.PAD_SIZE = 30  # width in pixels (>= 0, < half the input size) of the learned frame
        cfg.TRAINER.ADVVP.N_TOKENS = 5  # learned image tokens at the first block (>= 0; ViT backbones)
        cfg.TRAINER.ADVVP.TEMPLATE = ""  # text prompt with one "{}"; "" = the dataset's CoOp template
        # True: evaluate the trained model, frame included. False: as FAP's zsrobust.py test(), the attack
        # goes through the frame and the scored clean / attacked logits are computed without it
        cfg.TRAINER.ADVVP.EVAL_FRAME = True
        add_precision_key(cfg.TRAINER.ADVVP)

    def build_model(self) -> None:
        cfg, node = self.cfg, self.cfg.TRAINER.ADVVP
        clip_model = self.load_clip_model()
        visual = clip_model.visual
        if node.N_TOKENS and not isinstance(visual, clip.model.VisionTransformer):
            raise UserError(f"TRAINER.ADVVP.N_TOKENS {node.N_TOKENS} needs a ViT backbone; set it to 0 for "
                             f"{cfg.MODEL.BACKBONE.NAME}")
        template = check_template(node.TEMPLATE or get_template(cfg.DATASET.NAME))
        logger.info('Text prompt (frozen): "%s"', template)
        if not node.EVAL_FRAME:
            logger.info("TRAINER.ADVVP.EVAL_FRAME False: tests score the images without the learned frame "
                        "(attacks still go through it), as FAP's zsrobust.py test()")
        prompt = VisualPrompt(visual.input_resolution, node.PAD_SIZE, node.N_TOKENS, visual.conv1.weight.shape[0])
        self.install_model(VisualPromptCLIP(clip_model, self.classnames, template, prompt),
                           trainable=["visual_prompt"], learned="visual_prompt")

    def run_metadata(self) -> Dict[str, Any]:
        return {**super().run_metadata(), "eval_frame": bool(self.cfg.TRAINER.ADVVP.EVAL_FRAME)}

    # ------------------------------------------------------------ evaluation
    def eval_prompt_model(self, prompt: str) -> Optional[nn.Module]:
        """The learned prompt under ``EVAL_FRAME False``: FAP's evaluation; otherwise the default module."""
        if prompt == LEARNED and not self.cfg.TRAINER.ADVVP.EVAL_FRAME:
            with torch.no_grad():
                return FrameUnderAttackOnly(self.model, self.model.text_features())
        return None

    def model_inference(self, input: torch.Tensor) -> torch.Tensor:
        """The clean test's logits; without the frame under ``EVAL_FRAME False`` (FAP's test())."""
        if self.cfg.TRAINER.ADVVP.EVAL_FRAME:
            return super().model_inference(input)
        with precision_policy.autocast(self.test_precision(), self.device):
            logits = self.model(input, frame=False).float()
        check_finite_logits(logits, "test")
        return logits
