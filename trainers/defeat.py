"""DEFEAT (Chen et al., "Discrete Latent Features Ablate Adversarial Attack: A Robust
Prompt Tuning Framework for VLMs", ICLR 2026; code: cheny02/DEFEAT-ICLR2026, Apache-2.0).

APT's 16-token CoOp prompt plus the PerturbShield
(:mod:`ampt.models.perturb_shield`): the image tower's patch features through
a VQ-VAE (nearest codebook entry, straight-through estimator) and a learned
projection over the patches; the logits fuse CLIP's global logits and the
shield's, ``ALPHA * global + (1 - ALPHA) * shield``. Trained on APT's PGD
images (the attack goes through the fused model) with

    CE(fused logits) + W1 * shield_l1 + W2 * text_l1
        + W3 * vq_reconstruction + W4 * vq_codebook + COMMITMENT * W4 * vq_commitment

(registered terms of :mod:`ampt.objectives`; DEFEAT's ``trainers/defeat.py``
``forward_backward``). The prompt's context, the projection and the whole
VQ-VAE train, with one ``OPTIM`` each for ``prompt_learner`` and
``perturb_shield`` (SGD is per parameter: the same update as DEFEAT's single
optimizer). A backbone without patch features (a ResNet tower) is refused in
one line before training.

The final test also attacks with BPDA through the quantizer and records it
with its own label: the quantizer is declared a non-differentiable part
whose own gradient is already the straight-through one (DEFEAT's forward),
so both numbers come from the same gradient and should agree.
DEFEAT's ``TRAINER.COOP.*`` command lines are read as ``TRAINER.DEFEAT.*``.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, Sequence, Tuple

from yacs.config import CfgNode as CN

from ampt.api import TRAINER_REGISTRY
from ampt.attacks import ATTACK_REGISTRY
from ampt.errors import UserError
from ampt.evaluation.evaluated_prompt import prompt_model
from ampt.evaluation.robust_accuracy import accuracy_under_attack
from ampt.method_kits.coop_prompt import COOP_FOLDER_KEYS, add_coop_prompt_keys, coop_folder_tag
from ampt.models import PromptLearner
from ampt.models.interface import LEARNED
from ampt.models.perturb_shield import DefeatCLIP, check_patch_features
from ampt.precision import at_precision
from ampt.trainer_base.adversarial import AdversarialClipTrainer

logger = logging.getLogger(__name__)

DEFEAT_KEYS = ("ALPHA", "W1", "W2", "W3", "W4", "COMMITMENT", "VQ_DIM", "VQ_CODES")


@TRAINER_REGISTRY.register()
class DEFEAT(AdversarialClipTrainer):
    """APT's prompt + PerturbShield (VQ-VAE over patch features), fused logits, DEFEAT's loss."""

    cfg_node = "DEFEAT"
    config_aliases = {"TRAINER.COOP": "TRAINER.DEFEAT"}
    run_folder_keys = tuple(f"TRAINER.DEFEAT.{key}" for key in COOP_FOLDER_KEYS + DEFEAT_KEYS)

    @classmethod
    def run_folder_tag(cls, cfg: CN) -> str:
        v = cfg.TRAINER.DEFEAT
        # DEFEAT's scripts: .../nctx16_cscFalse_ctpend/.../W1_10.0_W2_20.0_W3_0.5_W4_0.1_A_0.5/...
        return (f"{coop_folder_tag(v)}_W1_{v.W1}_W2_{v.W2}_W3_{v.W3}_W4_{v.W4}_A_{v.ALPHA}"
                f"_vq{v.VQ_DIM}x{v.VQ_CODES}_c{v.COMMITMENT}")

    @staticmethod
    def add_config(cfg: CN) -> None:
        cfg.TRAINER.DEFEAT = node = CN()
        add_coop_prompt_keys(node)  # N_CTX 16, CSC, CTX_INIT, PREC, CLASS_TOKEN_POSITION (DEFEAT's train.py)
        node.ALPHA = 0.5  # weight of the global logits in the fusion (train.py TRAINER.COOP.ALPHA)
        node.W1 = 10.0  # shield_l1: projected shield vs global image feature (TRAINER.COOP.W1)
        node.W2 = 20.0  # text_l1: learned vs hand-written text features (TRAINER.COOP.W2)
        node.W3 = 0.5  # vq_reconstruction (TRAINER.COOP.W3)
        node.W4 = 0.1  # vq_codebook; vq_commitment gets COMMITMENT * W4 (TRAINER.COOP.W4)
        node.COMMITMENT = 0.25  # the 0.25 of defeat.py's "0.25 * W4 * l_commitment"
        node.VQ_DIM = 256  # VQ-VAE hidden channels and code size (defeat.py VQVAE_NET(512, 256, 512))
        node.VQ_CODES = 512  # codebook entries (ibid.)
        node.TEST_BPDA = True  # the final test also runs ADV.TEST with BPDA through the quantizer (own record)

    def check_cfg(self, cfg: Any) -> None:
        v = cfg.TRAINER.DEFEAT
        if not 0.0 <= float(v.ALPHA) <= 1.0:
            raise UserError(f"TRAINER.DEFEAT.ALPHA must be in [0, 1] (got {v.ALPHA})")
        for key in ("W1", "W2", "W3", "W4", "COMMITMENT"):
            if float(v[key]) < 0:
                raise UserError(f"TRAINER.DEFEAT.{key} must be >= 0 (got {v[key]})")
        for key in ("VQ_DIM", "VQ_CODES"):
            if int(v[key]) < 1:
                raise UserError(f"TRAINER.DEFEAT.{key} must be >= 1 (got {v[key]})")
        super().check_cfg(cfg)

    def objective_terms(self, cfg: Any) -> Sequence[Tuple[str, float]]:
        """DEFEAT's weights as terms after ``ADV.TRAIN.LOSS`` (``ce``): its ``loss_scl``, then ``loss_vae``."""
        v = cfg.TRAINER.DEFEAT
        w4 = float(v.W4)
        return (("shield_l1", float(v.W1)), ("text_l1", float(v.W2)), ("vq_reconstruction", float(v.W3)),
                ("vq_codebook", w4), ("vq_commitment", float(v.COMMITMENT) * w4))

    def build_model(self) -> None:
        node = self.cfg.TRAINER.DEFEAT
        clip_model = self.load_clip_model()
        check_patch_features(clip_model.visual)
        learner = PromptLearner(clip_model, self.classnames, n_ctx=node.N_CTX, ctx_init=node.CTX_INIT, csc=node.CSC,
                                class_token_position=node.CLASS_TOKEN_POSITION)
        model = DefeatCLIP(clip_model, learner, alpha=float(node.ALPHA), vq_dim=int(node.VQ_DIM),
                           vq_codes=int(node.VQ_CODES))
        self.install_model(model, trainable=["prompt_learner.ctx", "perturb_shield"],
                           more_learned={"perturb_shield": self.cfg.OPTIM})

    def run_metadata(self) -> Dict[str, Any]:
        return {**super().run_metadata(), "fusion_alpha": float(self.cfg.TRAINER.DEFEAT.ALPHA)}

    # ------------------------------------------------------------ evaluation
    def final_evaluation(self) -> None:
        """The base's clean and robust tests, then the same attack with BPDA through the quantizer, recorded apart."""
        super().final_evaluation()
        spec = self.test_attack
        if not self.cfg.TRAINER.DEFEAT.TEST_BPDA or spec is None or spec.bpda or getattr(ATTACK_REGISTRY.get(spec.name), "access", "") == "black-box":
            return
        spec = dataclasses.replace(spec, bpda=True)
        split, loader = self.final_test_split()
        self.set_model_mode("eval")
        model = at_precision(prompt_model(self, LEARNED), self.test_precision())
        seed = self.cfg.SEED if self.cfg.SEED >= 0 else 0
        label = spec.label
        outcome = accuracy_under_attack(model, loader, spec, self.num_classes, self.device, seed=seed,
                                        desc=f"test ({split}): {label}")
        logger.info("%s: %.2f%% (%d images, %.1f s)", label, outcome.accuracy, outcome.n_samples, outcome.seconds)
        self.write_scalar(f"{split}/robust_accuracy_bpda", outcome.accuracy, self.epoch)
        extra = {"label": label, "column": spec.column, "attack_prompt": LEARNED, "bpda": True,
                 "seconds": round(outcome.seconds, 2), "seed": seed, **outcome.extra}
        if spec.alpha is not None:
            extra["alpha"] = round(spec.alpha, 4)
        self.record_result(split, spec.name, spec.eps, spec.steps, outcome.n_samples, outcome.accuracy, **extra)
