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

from ampt.api import TRAINER_REGISTRY
from ampt.method_kits.deep_prompts import CoupledDeepPromptTrainer


@TRAINER_REGISTRY.register()
class AdvMaPLe(CoupledDeepPromptTrainer):
    """Adversarial MaPLe as in FAP's code: FAP's image-to-text coupled deep prompts, cross-entropy."""

    cfg_node = "ADVMAPLE"
    coupling = "fap"
