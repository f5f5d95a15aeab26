"""AdvMaPLe as FAP's code runs it (lionel-w2/FAP, ``trainers/advmaple.py``): the baseline FAP's paper
names "AdvMaPLe" (MaPLe, Khattak et al., CVPR 2023, trained adversarially).

FAP's ``advmaple.py`` does not use MaPLe's text-to-image coupling: its
prompt learner is FAP's own (the two files differ only in the config node
and the loss). N_CTX text tokens are learned for the first text block and
mapped to the first image block by one Linear (text width -> image width);
at every deeper block j = 1..PROMPT_DEPTH-1 the image tokens are learned and
the text tokens are ``Linear_j(image tokens)`` (image width -> text width).
This is the ``fap`` coupling of :class:`~ampt.models.DeepPromptLearner`, the
same learner as the FAP trainer's, trained here with ``ADV.TRAIN.LOSS``
(default ``ce``: cross-entropy on the adversarial images, FAP's ADV_TERM ce).
MaPLe's own coupling (text tokens learned at every depth, image tokens
projected from them) is the trainer ``AdvMaPLeOrig`` (``trainers/advmaple_orig.py``).
CLIP stays frozen. docs/method.md section 2 (the FAP family).
"""
from __future__ import annotations

from yacs.config import CfgNode as CN

from ampt.trainer_base.adversarial import AdversarialClipTrainer
from ampt.api import TRAINER_REGISTRY
from ampt.method_kits.deep_prompts import add_coupled_keys, build_deep_prompt_model


@TRAINER_REGISTRY.register()
class AdvMaPLe(AdversarialClipTrainer):
    """Adversarial MaPLe as in FAP's code: FAP's image-to-text coupled deep prompts, cross-entropy."""

    cfg_node = "ADVMAPLE"

    @staticmethod
    def add_config(cfg: CN) -> None:
        cfg.TRAINER.ADVMAPLE = CN()
        add_coupled_keys(cfg.TRAINER.ADVMAPLE)

    def build_model(self) -> None:
        node = self.cfg.TRAINER.ADVMAPLE
        build_deep_prompt_model(self, "ADVMAPLE", "fap", node.N_CTX, node.N_CTX, node.PROMPT_DEPTH,
                                node.PROMPT_DEPTH, node.CTX_INIT)
