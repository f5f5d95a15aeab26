"""AdvMaPLeOrig: MaPLe's own coupling (Khattak et al., "MaPLe: Multi-modal Prompt Learning", CVPR 2023;
code muzairkhattak/multimodal-prompt-learning, ``trainers/maple.py``), trained adversarially.

N_CTX text tokens are learned in each of the first PROMPT_DEPTH text blocks,
and the image tokens of each depth are a linear map (text width -> image
width) of the text tokens of that depth: the ``maple`` coupling of
:class:`~ampt.models.DeepPromptLearner`. This is not what FAP's code runs
under the name AdvMaPLe (its learner is FAP's image-to-text one; that is the
trainer ``AdvMaPLe``). Same keys as AdvMaPLe (``TRAINER.ADVMAPLE``), so a run
of either reads the other's configs; trained with ``ADV.TRAIN.LOSS`` (default
``ce``). CLIP stays frozen. docs/method.md section 2 (the FAP family).
"""
from __future__ import annotations

from ampt.api import TRAINER_REGISTRY
from ampt.method_kits.deep_prompts import CoupledDeepPromptTrainer


@TRAINER_REGISTRY.register()
class AdvMaPLeOrig(CoupledDeepPromptTrainer):
    """Adversarial MaPLe with MaPLe's text-to-image coupled deep prompts."""

    cfg_node = "ADVMAPLE"
    coupling = "maple"
