"""AdvVLP: independent deep vision-language prompts (IVLP, from MaPLe's code) trained adversarially,
the baseline FAP's code ships as ``ADVIVLP`` (lionel-w2/FAP, ``trainers/advindependentVL.py``).

Each tower learns its own tokens, N_CTX_TEXT in each of the first
PROMPT_DEPTH_TEXT text blocks and N_CTX_VISION in each of the first
PROMPT_DEPTH_VISION image blocks, with no coupling. Trained with
``ADV.TRAIN.LOSS`` (default ``ce``). CLIP stays frozen.
"""
from __future__ import annotations

from yacs.config import CfgNode as CN

from ampt.trainer_base.adversarial import AdversarialClipTrainer
from ampt.api import TRAINER_REGISTRY
from ampt.method_kits.deep_prompts import add_independent_keys, build_deep_prompt_model


@TRAINER_REGISTRY.register()
class AdvVLP(AdversarialClipTrainer):
    """Adversarial independent vision-language deep prompts."""

    cfg_node = "ADVVLP"

    @staticmethod
    def add_config(cfg: CN) -> None:
        cfg.TRAINER.ADVVLP = CN()
        add_independent_keys(cfg.TRAINER.ADVVLP)

    def build_model(self) -> None:
        node = self.cfg.TRAINER.ADVVLP
        build_deep_prompt_model(self, "ADVVLP", "independent", node.N_CTX_TEXT, node.N_CTX_VISION,
                                node.PROMPT_DEPTH_TEXT, node.PROMPT_DEPTH_VISION, node.CTX_INIT)
