"""CoOp (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022).

Learned context vectors ``[SOS][v_1..v_M][class][.][EOS]`` (unified or
class-specific; class token at the end, middle or front), trained with
cross-entropy on clean images while CLIP stays frozen. Built from the shared
modules: :class:`~ampt.models.PromptLearner` and
:class:`~ampt.models.PromptedCLIP`. Checkpoints hold the context vectors only.
"""
from __future__ import annotations

from typing import Any, Dict

import torch.nn.functional as F
from yacs.config import CfgNode as CN

from ampt.api import TRAINER_REGISTRY
from ampt.clip_trainer import ClipTrainer
from ampt.models import PromptedCLIP, PromptLearner
from ampt.optim import build_lr_scheduler, build_optimizer


@TRAINER_REGISTRY.register()
class CoOp(ClipTrainer):
    """Context Optimization (https://arxiv.org/abs/2109.01134)."""

    @staticmethod
    def add_config(cfg: CN) -> None:
        cfg.TRAINER.COOP = CN()
        cfg.TRAINER.COOP.N_CTX = 16  # number of learned context tokens (>= 1); CTX_INIT's token count overrides it
        cfg.TRAINER.COOP.CSC = False  # class-specific context (one per class) instead of one shared (unified)
        cfg.TRAINER.COOP.CTX_INIT = ""  # words to start from, e.g. "a photo of a"; "" = random N(0, 0.02)
        cfg.TRAINER.COOP.PREC = "fp16"  # fp16 | fp32 | amp; on CPU fp16 and amp fall back to fp32
        cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = "end"  # end | middle | front

    def build_model(self) -> None:
        cfg, node = self.cfg, self.cfg.TRAINER.COOP
        clip_model = self.load_clip_model()
        learner = PromptLearner(
            clip_model, self.classnames, n_ctx=node.N_CTX, ctx_init=node.CTX_INIT, csc=node.CSC,
            class_token_position=node.CLASS_TOKEN_POSITION,
        )
        self.model = self.setup_model(PromptedCLIP(clip_model, learner), trainable=["prompt_learner.ctx"])
        if cfg.MODEL.INIT_WEIGHTS:
            self.load_init_weights(self.model.prompt_learner, cfg.MODEL.INIT_WEIGHTS)
        self.optim = build_optimizer(self.model.prompt_learner, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("prompt_learner", self.model.prompt_learner, self.optim, self.sched)

    def forward_backward(self, batch: Dict[str, Any]) -> Dict[str, float]:
        image, label = self.parse_batch_train(batch)
        with self.autocast():
            output = self.model(image)
            loss = F.cross_entropy(output, label)
        self.model_backward_and_update(loss)
        summary = {
            "loss": loss.item(),
            "acc": 100.0 * (output.argmax(dim=1) == label).float().mean().item(),
        }
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary
