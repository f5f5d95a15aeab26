"""APT (Li et al., "One Prompt Word is Enough to Boost Adversarial Robustness for
Pre-trained Vision-Language Models", CVPR 2024, arXiv 2403.01849).

CoOp's learned prompt (unified or class-specific context, class token at the
end, middle or front, random or word init) trained with cross-entropy on
adversarial images only, CLIP frozen. The training attack and its prompt
modes (``ADV.TRAIN.*``, also ``train.py --eps --alpha --steps --adv-prompt``)
and the clean + robust final test come from
:class:`~ampt.adversarial.AdversarialClipTrainer`. APT's trainer read its
settings from ``TRAINER.COOP`` and flags only; here they are ``TRAINER.APT``
keys, settable from YAML and ``KEY VALUE`` overrides.
"""
from __future__ import annotations

from yacs.config import CfgNode as CN

from ampt.adversarial import AdversarialClipTrainer
from ampt.api import TRAINER_REGISTRY
from ampt.models import PromptedCLIP, PromptLearner
from ampt.optim import build_lr_scheduler, build_optimizer


@TRAINER_REGISTRY.register()
class APT(AdversarialClipTrainer):
    """Adversarial Prompt Tuning: one CoOp prompt, cross-entropy on PGD images."""

    cfg_node = "APT"

    @staticmethod
    def add_config(cfg: CN) -> None:
        AdversarialClipTrainer.add_adversarial_config(cfg)
        cfg.TRAINER.APT = CN()
        cfg.TRAINER.APT.N_CTX = 16  # number of learned context tokens (>= 1); CTX_INIT's token count overrides it
        cfg.TRAINER.APT.CSC = False  # class-specific context (one per class) instead of one shared (unified)
        cfg.TRAINER.APT.CTX_INIT = ""  # words to start from, e.g. "a photo of a"; "" = random N(0, 0.02)
        cfg.TRAINER.APT.CLASS_TOKEN_POSITION = "end"  # end | middle | front
        cfg.TRAINER.APT.PREC = "fp16"  # fp16 | fp32 | amp; on CPU fp16 and amp fall back to fp32

    def build_model(self) -> None:
        cfg, node = self.cfg, self.cfg.TRAINER.APT
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
