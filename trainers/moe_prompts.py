"""MoEAdvVLP: adversarial mixture-of-experts deep prompts on independent V-L prompts (IVLP).

The MoE variant of AdvVLP that xinwong/Multimodal-Adversarial-Prompt-Tuning
ships as ``MoEAdvIVLP`` (``trainers/adv_independentVL_moe.py``, commit
926889f: 3 experts, 2 + 2 tokens, depth 9, PGD-2 training at eps 1/255,
PGD-100 test). That commit's CLIP has no MoE block (its trainer asks for a
``IVLP_MoE`` design its ``clip/model.py`` does not build, and reads
``TRAINER.MoEMoEAdvIVLP``), so the experts and the gate follow xinwong/MMoP's
``clip/model.py`` (:mod:`ampt.models.moe_prompts`; docs/method.md, section
"Mixture-of-experts deep prompts").

Each deeper prompted block of each tower has K expert prompts and a linear
gate over the block's input tokens; the block's prompt is the gate-weighted
sum of its experts (per image on the image side, per class prompt on the
text side). One pass of each tower per forward. ``PROMPT_DEPTH_TEXT 0``
gives the visual-only variant (MMoP's ``MoEAdvVPT`` outline: a hand-written
text prompt ``CTX_INIT {class}.``); ``COUPLING maple`` the MaPLe-coupled one
(MAPT's ``MoEAdvMaPLe``: block 0's image tokens are ``Linear(text ctx)``).
``GATE anchored`` is MMoP's later IVLP gate (a learned base prompt, residual
scale and temperature; ``ANCHOR`` keys), and its two auxiliary losses are the
registered terms ``gate_balance`` and ``expert_diversity``
(``ADV.TRAIN.LOSS ce+0.1*gate_balance+0.1*expert_diversity``).

Router diagnostics: the image gates' weights (mean over gated blocks, and
per block) go to ``OUTPUT_DIR/router_stats.json`` each epoch (the training
forward's adversarial images) and on the final test split (clean and
attacked), with AMPT's statistics; the text gates' per-class weights are
recorded each epoch. ``router_weights()`` (the mean over gated image blocks)
makes the ``router_balance`` loss term available.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import torch
from yacs.config import CfgNode as CN

from ampt.api import TRAINER_REGISTRY
from ampt.errors import UserError
from ampt.method_kits.deep_prompts import _check_depths, add_independent_keys
from ampt.models import DeepTextLayout
from ampt.models.moe_prompts import (GATE_MODES, MOE_COUPLINGS, ROUTINGS, AnchorSettings, MoEDeepPromptCLIP,
                                     MoEDeepPromptLearner)
from ampt.models.router import weight_entropy
from ampt.models.router_stats import EpochAccumulator, TestWeightLog
from ampt.objectives import TrainingStep
from ampt.trainer_base.adversarial import AdversarialClipTrainer
from ampt.models.router_stats import update_router_stats_file

logger = logging.getLogger(__name__)



def check_moe_cfg(node: CN) -> None:
    """Refuse, in one line each, an expert count below 1, an unknown gate and a gate with no deep prompt to mix."""
    if node.N_EXPERTS < 1:
        raise UserError(f"TRAINER.MOEADVVLP.N_EXPERTS must be >= 1 (got {node.N_EXPERTS})")
    if node.GATE not in GATE_MODES:
        raise UserError(f'TRAINER.MOEADVVLP.GATE "{node.GATE}" is not one of {", ".join(GATE_MODES)}')
    if node.ANCHOR.ROUTING not in ROUTINGS:
        raise UserError(f'TRAINER.MOEADVVLP.ANCHOR.ROUTING "{node.ANCHOR.ROUTING}" is not one of {", ".join(ROUTINGS)}')
    for key in ("ALPHA_RANGE", "TAU_RANGE"):
        bounds = list(node.ANCHOR[key])
        if len(bounds) != 2 or not 0 <= bounds[0] <= bounds[1] or (key == "TAU_RANGE" and bounds[1] <= 0):
            raise UserError(f"TRAINER.MOEADVVLP.ANCHOR.{key} must be [min, max] with 0 <= min <= max"
                            f"{' and max > 0' if key == 'TAU_RANGE' else ''} (got {bounds})")
    if node.COUPLING not in MOE_COUPLINGS:
        raise UserError(f'TRAINER.MOEADVVLP.COUPLING "{node.COUPLING}" is not one of {", ".join(MOE_COUPLINGS)}')
    if node.COUPLING == "maple" and (node.N_CTX_TEXT != node.N_CTX_VISION or node.N_CTX_TEXT < 1
                                     or node.PROMPT_DEPTH_TEXT != node.PROMPT_DEPTH_VISION):
        raise UserError("TRAINER.MOEADVVLP.COUPLING maple needs N_CTX_TEXT = N_CTX_VISION >= 1 and PROMPT_DEPTH_TEXT = "
                        f"PROMPT_DEPTH_VISION (got {node.N_CTX_TEXT}/{node.N_CTX_VISION}, "
                        f"{node.PROMPT_DEPTH_TEXT}/{node.PROMPT_DEPTH_VISION})")
    text = node.PROMPT_DEPTH_TEXT if node.N_CTX_TEXT else 0
    vision = node.PROMPT_DEPTH_VISION if node.N_CTX_VISION else 0
    if max(text, vision) < 2:
        raise UserError("TRAINER.MOEADVVLP: a gate needs deep prompts (PROMPT_DEPTH_TEXT or PROMPT_DEPTH_VISION "
                        f">= 2 with tokens); got text {node.N_CTX_TEXT} tokens x {node.PROMPT_DEPTH_TEXT} blocks, "
                        f"image {node.N_CTX_VISION} tokens x {node.PROMPT_DEPTH_VISION} blocks")


def anchor_settings(node: CN) -> AnchorSettings:
    a = node.ANCHOR
    return AnchorSettings(a.ROUTING, float(a.HYBRID_LAMBDA), float(a.ALPHA_INIT),
                          tuple(float(v) for v in a.ALPHA_RANGE), tuple(float(v) for v in a.TAU_RANGE))


@TRAINER_REGISTRY.register()
class MoEAdvVLP(AdversarialClipTrainer):
    """Adversarial independent V-L deep prompts whose deeper prompts are gated mixtures of K experts."""

    cfg_node = "MOEADVVLP"

    @staticmethod
    def add_config(cfg: CN) -> None:
        cfg.TRAINER.MOEADVVLP = CN()
        node = cfg.TRAINER.MOEADVVLP
        add_independent_keys(node)
        node.N_EXPERTS = 3  # K expert prompts per deeper prompted block (>= 1); MAPT commit 926889f's NUM_EXPERTS
        node.COUPLING = "independent"  # independent (IVLP, MAPT's MoEAdvIVLP) | maple (block 0's image tokens = Linear(ctx))
        node.GATE = "token_softmax"  # token_softmax (mean of per-token softmax, MMoP) | token_mean | anchored (MMoP's IVLP MoE)
        node.ANCHOR = CN()  # the anchored gate's settings (GATE anchored); defaults: MMoP's MoEAdvIVLP ViT-B/32 config
        node.ANCHOR.ROUTING = "token_mean"  # cls | token_mean | hybrid (HYBRID_LAMBDA x cls + (1 - HYBRID_LAMBDA) x mean)
        node.ANCHOR.HYBRID_LAMBDA = 0.7
        node.ANCHOR.ALPHA_INIT = 1.0  # MMoP's DELTA_SCALE_INIT: the start of alpha in b + alpha (mixture - b)
        node.ANCHOR.ALPHA_RANGE = [0.0, 2.0]  # MMoP's ALPHA_MIN, ALPHA_MAX
        node.ANCHOR.TAU_RANGE = [0.7, 1.3]  # MMoP's TAU_MIN, TAU_MAX (the gate's softmax temperature, starts at 1)

    def check_cfg(self, cfg: Any) -> None:
        check_moe_cfg(cfg.TRAINER.MOEADVVLP)
        super().check_cfg(cfg)

    def run_metadata(self) -> Dict[str, Any]:
        node = self.cfg.TRAINER.MOEADVVLP
        meta = {**super().run_metadata(), "n_experts": node.N_EXPERTS, "gate": node.GATE, "coupling": node.COUPLING}
        if node.GATE == "anchored":
            meta["anchor"] = {k.lower(): (list(v) if isinstance(v, (list, tuple)) else v) for k, v in node.ANCHOR.items()}
        return meta

    def build_model(self) -> None:
        node = self.cfg.TRAINER.MOEADVVLP
        clip_model = self.load_clip_model()
        depth_text = node.PROMPT_DEPTH_TEXT if node.N_CTX_TEXT else 0
        depth_vision = node.PROMPT_DEPTH_VISION if node.N_CTX_VISION else 0
        _check_depths(clip_model, "MOEADVVLP", depth_text, depth_vision)
        layout = DeepTextLayout(clip_model, self.classnames, node.N_CTX_TEXT if depth_text else 0, node.CTX_INIT)
        learner = MoEDeepPromptLearner(clip_model.ln_final.weight.shape[0], clip_model.visual.conv1.weight.shape[0],
                                       node.N_EXPERTS, node.N_CTX_TEXT, node.N_CTX_VISION, depth_text, depth_vision,
                                       node.GATE, layout.initial_ctx(), node.COUPLING, anchor_settings(node))
        self.install_model(MoEDeepPromptCLIP(clip_model, learner, layout), trainable=["prompt_learner"])
        logger.info("MoE deep prompts: %s", learner)

    # ------------------------------------------------------------ router statistics
    def _gated(self) -> bool:
        return self.model.prompt_learner.depth_vision >= 2

    def before_epoch(self) -> None:
        super().before_epoch()
        n_blocks = len(self.model.prompt_learner.vision_gates)
        k = self.cfg.TRAINER.MOEADVVLP.N_EXPERTS
        self._epoch_mean = EpochAccumulator(k)
        self._epoch_blocks = [EpochAccumulator(k) for _ in range(n_blocks)]

    def observe_step(self, step: TrainingStep) -> Dict[str, float]:
        """The adversarial forward's gate weights (mean over blocks, and per block) go into the epoch's statistics."""
        if step.adv_router_weights is None or getattr(self, "_epoch_mean", None) is None:
            return {}
        self._epoch_mean.add_weights(step.adv_router_weights.detach())
        for acc, weights in zip(self._epoch_blocks, self.model.snapshot):
            acc.add_weights(weights)
        return {"gate_entropy": weight_entropy(step.adv_router_weights.detach()).mean().item()}

    def _text_gate_stats(self) -> list:
        with torch.no_grad(), self.autocast():
            self.model.text_features()
        return [{"mean_weights": [round(float(v), 5) for v in w.float().mean(dim=0)],
                 "entropy": round(float(weight_entropy(w.float()).mean()), 5)} for w in self.model.text_gate_weights]

    def after_epoch(self) -> None:
        summary = self._epoch_mean.summary() if getattr(self, "_epoch_mean", None) is not None else None
        if summary is not None:
            stats = {"epoch": self.epoch + 1, **summary,
                     "blocks": [acc.summary() for acc in self._epoch_blocks], "text_gates": self._text_gate_stats()}
            logger.info("gates (epoch %d, %d adversarial images): mean weights %s, entropy %.3f (uniform %.3f), "
                        "entropy of the mean %.3f, TV from the batch mean %.4f", stats["epoch"], stats["n_images"],
                        stats["mean_weights"], stats["entropy"], stats["max_entropy"], stats["entropy_of_mean"],
                        stats["tv_from_batch_mean"])
            for k, w in enumerate(stats["mean_weights"]):
                self.write_scalar(f"router/mean_weight_{k + 1}", w, stats["epoch"])
            self.write_scalar("router/entropy", stats["entropy"], stats["epoch"])
            self._update_router_stats_file(epoch=stats)
        super().after_epoch()

    def _update_router_stats_file(self, epoch: Optional[Dict[str, Any]] = None, **sections: Any) -> None:
        update_router_stats_file(self.output_dir, epoch=epoch, **sections)

    _test_weights: Optional[TestWeightLog] = None

    def robust_test_observer(self) -> Optional[TestWeightLog]:
        return self._test_weights

    def final_evaluation(self) -> None:
        """The clean and robust test, then the image gates' weights on that split, clean and attacked."""
        self._test_weights = TestWeightLog(lambda: self.model.last_weights) if self._gated() else None
        try:
            super().final_evaluation()
        finally:
            log, self._test_weights = self._test_weights, None
        if log is None:
            return
        self._update_router_stats_file(test=self.routing_test_stats(log))
