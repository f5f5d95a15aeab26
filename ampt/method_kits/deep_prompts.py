"""Deep prompts for trainers: config keys and the model builder shared by FAP, AdvMaPLe, AdvMaPLeOrig and AdvVLP.

``add_coupled_keys`` / ``add_independent_keys`` fill a ``TRAINER.<NAME>``
node; :class:`CoupledDeepPromptTrainer` is the whole trainer of a coupled
method but its node name and coupling (FAP, AdvMaPLe, AdvMaPLeOrig);
``build_deep_prompt_model`` builds a
:class:`~ampt.models.DeepPromptCLIP` on the trainer's CLIP, freezes all but
the learner (prompt tokens and coupling layers, fp32), and registers it with
its optimizer and LR schedule as model ``"prompt_learner"``.
"""
from __future__ import annotations

from typing import Any

from torch import nn
from yacs.config import CfgNode as CN

from ..models import DeepPromptCLIP, DeepPromptLearner, DeepTextLayout
from ..trainer_base.adversarial import AdversarialClipTrainer
from ..models.clip_loader import clip
from ..errors import UserError
from ..precision import add_precision_key


def add_coupled_keys(node: CN) -> None:
    """MaPLe's keys (one token count and depth for both towers), with MaPLe's/FAP's values."""
    node.N_CTX = 2  # learned tokens per block in each tower (>= 1)
    node.CTX_INIT = "a photo of a"  # text prompt words; the first N_CTX tokens are learned ("" = N(0, 0.02))
    node.PROMPT_DEPTH = 9  # J, blocks of each tower that read learned tokens (1..number of blocks)
    add_precision_key(node)


def add_independent_keys(node: CN) -> None:
    """IVLP's keys (each tower its own token count and depth)."""
    node.N_CTX_TEXT = 2  # learned text tokens per block (>= 0)
    node.N_CTX_VISION = 2  # learned image tokens per block (>= 0)
    node.PROMPT_DEPTH_TEXT = 9  # text blocks that read learned tokens (0..text blocks)
    node.PROMPT_DEPTH_VISION = 9  # image blocks that read learned tokens (0..image blocks)
    node.CTX_INIT = "a photo of a"  # text prompt words; the first N_CTX_TEXT tokens are learned
    add_precision_key(node)


def _check_depths(clip_model: nn.Module, node_name: str, depth_text: int, depth_vision: int) -> None:
    text_blocks = len(clip_model.transformer.resblocks)
    visual = clip_model.visual
    vision_blocks = len(visual.transformer.resblocks) if isinstance(visual, clip.model.VisionTransformer) else 0
    if depth_text < 0 or depth_text > text_blocks or depth_vision < 0 or depth_vision > vision_blocks:
        raise UserError(
            f"TRAINER.{node_name} prompt depths text {depth_text} / image {depth_vision} do not fit the backbone "
            f"({text_blocks} text blocks, {vision_blocks} image blocks{'' if vision_blocks else ': not a ViT'})"
        )
    if depth_text == 0 and depth_vision == 0:
        raise UserError(f"TRAINER.{node_name}: both prompt depths are 0, nothing to learn")


def build_deep_prompt_model(trainer: Any, node_name: str, coupling: str, n_ctx_text: int, n_ctx_vision: int,
                            depth_text: int, depth_vision: int, ctx_init: str) -> None:
    """Set ``trainer.model``, ``optim`` and ``sched`` for deep prompts with ``coupling``."""
    clip_model = trainer.load_clip_model()
    _check_depths(clip_model, node_name, depth_text if n_ctx_text else 0, depth_vision if n_ctx_vision else 0)
    layout = DeepTextLayout(clip_model, trainer.classnames, n_ctx_text if depth_text else 0, ctx_init)
    learner = DeepPromptLearner(clip_model.ln_final.weight.shape[0], clip_model.visual.conv1.weight.shape[0],
                                coupling, n_ctx_text, n_ctx_vision, depth_text, depth_vision, layout.initial_ctx())
    trainer.install_model(DeepPromptCLIP(clip_model, learner, layout), trainable=["prompt_learner"])


class CoupledDeepPromptTrainer(AdversarialClipTrainer):
    """An adversarial trainer of coupled deep prompts: ``add_coupled_keys`` in ``TRAINER.<cfg_node>``.

    Subclasses set ``cfg_node`` and ``coupling`` (a :data:`~ampt.models.COUPLINGS` name); one token
    count and one depth serve both towers.
    """

    coupling: str = ""

    @classmethod
    def add_config(cls, cfg: CN) -> None:
        cfg.TRAINER[cls.cfg_node] = CN()
        add_coupled_keys(cfg.TRAINER[cls.cfg_node])

    def build_model(self) -> None:
        node = self.cfg.TRAINER[self.cfg_node]
        build_deep_prompt_model(self, self.cfg_node, self.coupling, node.N_CTX, node.N_CTX, node.PROMPT_DEPTH,
                                node.PROMPT_DEPTH, node.CTX_INIT)
