"""FAP (Zhou et al., "Few-Shot Adversarial Prompt Learning on Vision-Language Models", NeurIPS 2024,
arXiv 2403.14774; code lionel-w2/FAP).

Deep prompts in both towers (N_CTX tokens in each of the first PROMPT_DEPTH
blocks), coupled image to text: the first block's image tokens are a linear
map of the text prompt's learned tokens (as in MaPLe), and at every deeper
block the image tokens are learned and the text tokens are a linear map of
them. Trained with the ``fap`` objective (``ADV.TRAIN.LOSS``, the default of
this trainer): clean cross-entropy plus ``ADV.TRAIN.FAP_LAMBDA`` times the
KL between the adversarial and clean predictions, weighted per image by
(cosine of the clean and adversarial image features + 1); the training
attack maximises the KL. CLIP stays frozen.
"""
from __future__ import annotations

from ampt.api import TRAINER_REGISTRY
from ampt.method_kits.deep_prompts import CoupledDeepPromptTrainer


@TRAINER_REGISTRY.register()
class FAP(CoupledDeepPromptTrainer):
    """Few-shot Adversarial Prompt learning: image-to-text coupled deep prompts, the fap loss."""

    cfg_node = "FAP"
    coupling = "fap"
    default_loss = "fap"
