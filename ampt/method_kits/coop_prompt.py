"""CoOp's single learned prompt, shared by the trainers that use it (CoOp, APT).

``add_coop_prompt_keys`` fills a ``TRAINER.<NAME>`` node with CoOp's prompt
keys; ``build_coop_prompt_model`` builds the prompted CLIP from that node,
freezes everything but the context vectors, and registers the prompt learner
with its optimizer and LR schedule as model ``"prompt_learner"``.
"""
from __future__ import annotations

from typing import Any

from yacs.config import CfgNode as CN

from ..models import PromptedCLIP, PromptLearner
from ..precision import add_precision_key


COOP_FOLDER_KEYS = ("N_CTX", "CSC", "CLASS_TOKEN_POSITION")


def coop_folder_tag(node: Any) -> str:
    """The run-folder level of a CoOp prompt, as CoOp's scripts name it: ``nctx16_cscFalse_ctpend``."""
    return f"nctx{node.N_CTX}_csc{node.CSC}_ctp{node.CLASS_TOKEN_POSITION}"


def add_coop_prompt_keys(node: CN) -> None:
    """CoOp's prompt keys with CoOp's defaults."""
    node.N_CTX = 16  # number of learned context tokens (>= 1); CTX_INIT's token count overrides it
    node.CSC = False  # class-specific context (one per class) instead of one shared (unified)
    node.CTX_INIT = ""  # words to start from, e.g. "a photo of a"; "" = random N(0, 0.02)
    add_precision_key(node)
    node.CLASS_TOKEN_POSITION = "end"  # end | middle | front


def build_coop_prompt_model(trainer: Any, node: CN) -> None:
    """Set ``trainer.model``, ``optim`` and ``sched`` for one CoOp prompt read from ``node``."""
    clip_model = trainer.load_clip_model()
    learner = PromptLearner(
        clip_model, trainer.classnames, n_ctx=node.N_CTX, ctx_init=node.CTX_INIT, csc=node.CSC,
        class_token_position=node.CLASS_TOKEN_POSITION,
    )
    trainer.install_model(PromptedCLIP(clip_model, learner), trainable=["prompt_learner.ctx"])
