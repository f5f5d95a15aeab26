"""AdvMaPLe: MaPLe (Khattak et al., "MaPLe: Multi-modal Prompt Learning", CVPR 2023) trained adversarially,
the baseline FAP's paper and code (lionel-w2/FAP, ``trainers/advmaple.py``) compare against.

Deep prompts in both towers coupled text to image: N_CTX learned text tokens
in each of the first PROMPT_DEPTH text blocks, and the image tokens of each
depth a linear map (text width -> image width) of the text tokens of that
depth. Trained with ``ADV.TRAIN.LOSS`` (default ``ce``: cross-entropy on the
adversarial images, TeCoA's loss). CLIP stays frozen.
"""
from __future__ import annotations

from yacs.config import CfgNode as CN

from ampt.adversarial import AdversarialClipTrainer
from ampt.api import TRAINER_REGISTRY
from ampt.deep_prompt_trainer_kit import add_coupled_keys, build_deep_prompt_model


@TRAINER_REGISTRY.register()
class AdvMaPLe(AdversarialClipTrainer):
    """Adversarial MaPLe: text-to-image coupled deep prompts."""

    cfg_node = "ADVMAPLE"

    @staticmethod
    def add_config(cfg: CN) -> None:
        cfg.TRAINER.ADVMAPLE = CN()
        add_coupled_keys(cfg.TRAINER.ADVMAPLE)

    def build_model(self) -> None:
        node = self.cfg.TRAINER.ADVMAPLE
        build_deep_prompt_model(self, "ADVMAPLE", "maple", node.N_CTX, node.N_CTX, node.PROMPT_DEPTH,
                                node.PROMPT_DEPTH, node.CTX_INIT)
