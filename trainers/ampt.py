"""AMPT: adversarial mixture prompt tuning (arXiv 2505.17509; v2 renamed MoAPT).

K learned prompts (CoOp's form, L context tokens each) and a router that
reads the L2-normalized image feature of the current input (the adversarial
image during training) and predicts mixture weights; each image gets its own
class text features ``normalize(sum_k w_k(x) t[k, c])``. Trained like APT:
cross-entropy on PGD images, the attack going through the whole model, router
included. The paper's abstract fixes only this outline: every default below
(K = 4, L = 4, linear router, temperature 1, dense weights, feature mixing,
extra loss weights 0) is ours (docs/method.md section 3) and is a config key.

Cost: the K x C prompts are encoded in one batched, trimmed text pass per
training step, reused (detached) by every attack step (see
:class:`~ampt.adversarial.AdversarialClipTrainer`); only the router and the
weighted sum depend on the image.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from ampt.adversarial import AdversarialClipTrainer
from ampt.api import TRAINER_REGISTRY
from ampt.errors import UserError
from ampt.models import PromptLearner
from ampt.models.mixture import MIX_MODES, FixedRouting, MixturePromptedCLIP
from ampt.models.router import ROUTER_KINDS, Router, weight_entropy
from ampt.engine import distributed
from ampt.optim import build_lr_scheduler, build_optimizer
from ampt.utils.io import read_json, write_json

logger = logging.getLogger(__name__)

INIT_MODES = ("random", "first", "all")
# ATTACK_ROUTER -> the model's route mode during the training attack
ATTACK_ROUTES = {"full": "learned", "uniform": "uniform", "detached": "detached"}
ROUTER_STATS_FILE = "router_stats.json"


def check_ampt_cfg(node: CN) -> None:
    """Refuse invalid or unused ``TRAINER.AMPT`` settings before anything is built."""
    if node.N_PROMPTS < 1 or node.N_CTX < 1:
        raise UserError(f"TRAINER.AMPT.N_PROMPTS and N_CTX must be >= 1 (got {node.N_PROMPTS}, {node.N_CTX})")
    checks = (("INIT", INIT_MODES), ("ROUTER", ROUTER_KINDS), ("MIX", MIX_MODES), ("ATTACK_ROUTER", tuple(ATTACK_ROUTES)))
    for key, valid in checks:
        if node[key] not in valid:
            raise UserError(f'TRAINER.AMPT.{key} "{node[key]}" is not one of {", ".join(valid)}')
    if (node.INIT == "random") != (node.CTX_INIT == ""):
        raise UserError(
            f'TRAINER.AMPT.INIT "{node.INIT}" with CTX_INIT "{node.CTX_INIT}": INIT first/all needs '
            'CTX_INIT words (e.g. "a photo of a"), and CTX_INIT words need INIT first or all'
        )
    if node.N_PROMPTS == 1 and node.ROUTER != "uniform":
        raise UserError("TRAINER.AMPT.N_PROMPTS 1 leaves the router nothing to weigh: set ROUTER uniform")
    if node.ROUTER == "uniform":
        defaults = (("TEMPERATURE", 1.0), ("TOP_K", 0), ("ATTACK_ROUTER", "full"), ("ROUTER_LR_MULT", 1.0))
        unused = [k for k, default in defaults if node[k] != default]
        if unused:
            raise UserError(f"TRAINER.AMPT.ROUTER uniform does not use {unused}: leave them at their defaults")
    if node.ROUTER_LR_MULT <= 0:
        raise UserError(f"TRAINER.AMPT.ROUTER_LR_MULT must be > 0 (got {node.ROUTER_LR_MULT})")
    for key in ("CLEAN_CE_WEIGHT", "TRADES_KL_WEIGHT", "BALANCE_WEIGHT"):
        if node[key] < 0:
            raise UserError(f"TRAINER.AMPT.{key} must be >= 0 (got {node[key]})")


def scaled_lr(optim_cfg: CN, mult: float) -> CN:
    """A copy of ``OPTIM`` whose learning rates (base and warm-up) are multiplied by ``mult``."""
    scaled = optim_cfg.clone()
    scaled.defrost()
    for key in ("LR", "WARMUP_CONS_LR", "WARMUP_MIN_LR"):
        scaled[key] = float(optim_cfg[key]) * mult
    scaled.freeze()
    return scaled


@TRAINER_REGISTRY.register()
class AMPT(AdversarialClipTrainer):
    """Adversarial Mixture Prompt Tuning: K prompts, an image-conditioned router, APT's training attack."""

    cfg_node = "AMPT"
    eval_prompt_modes: Tuple[str, ...] = ("uniform",)

    @staticmethod
    def add_config(cfg: CN) -> None:
        cfg.TRAINER.AMPT = CN()
        c = cfg.TRAINER.AMPT
        c.N_PROMPTS = 4  # K, number of prompts (>= 1; 1 with ROUTER uniform is one long prompt, i.e. APT)
        c.N_CTX = 4  # L, context tokens per prompt (>= 1); CTX_INIT's token count overrides it
        c.CTX_INIT = ""  # words to start from, e.g. "a photo of a"; "" with INIT random
        c.INIT = "random"  # random (N(0, 0.02) per prompt) | first (CTX_INIT for prompt 1) | all
        c.CSC = False  # class-specific contexts (K x C of them) instead of unified ones
        c.CLASS_TOKEN_POSITION = "end"  # end | middle | front
        c.ROUTER = "linear"  # linear | mlp | uniform (no router: weights 1/K)
        c.ROUTER_HIDDEN = 0  # mlp hidden width (>= 0; 0 = the image feature size); only with ROUTER mlp
        c.TEMPERATURE = 1.0  # softmax temperature of the router (> 0; lower is sharper)
        c.ROUTER_LR_MULT = 1.0  # router learning rate (and warm-up LR) = OPTIM's x this (> 0); prompts use OPTIM's
        c.TOP_K = 0  # keep the TOP_K largest router weights per image, renormalized (0 = dense; <= N_PROMPTS)
        c.MIX = "features"  # features (mix normalized text features) | logits (mix per-prompt logits)
        c.CLEAN_CE_WEIGHT = 0.0  # weight (>= 0) of cross-entropy on the clean images
        c.TRADES_KL_WEIGHT = 0.0  # weight (>= 0) of KL(p_clean || p_adv), batch mean (TRADES-style)
        c.BALANCE_WEIGHT = 0.0  # weight (>= 0) of log K - entropy of the batch-mean router weights
        c.ATTACK_ROUTER = "full"  # training attack's weights: full (through the router) | uniform | detached
        c.PREC = "fp16"  # training compute: fp32 | bf16 | fp16 (= amp: autocast + grad scaler; fp32 on CPU); weights stay fp32

    def check_cfg(self, cfg: Any) -> None:
        super().check_cfg(cfg)
        check_ampt_cfg(cfg.TRAINER.AMPT)
        if cfg.ADV.TRAIN.LOSS != "ce":
            raise ValueError(f'AMPT trains with ADV.TRAIN.LOSS "ce" plus its own TRAINER.AMPT.CLEAN_CE_WEIGHT and '
                             f'TRADES_KL_WEIGHT terms (got LOSS "{cfg.ADV.TRAIN.LOSS}")')

    def run_metadata(self) -> Dict[str, Any]:
        node = self.cfg.TRAINER.AMPT
        return {**super().run_metadata(), "n_prompts": node.N_PROMPTS, "n_ctx": node.N_CTX, "router": node.ROUTER}

    # ------------------------------------------------------------ model
    def build_model(self) -> None:
        cfg, node = self.cfg, self.cfg.TRAINER.AMPT
        clip_model = self.load_clip_model()
        learner = PromptLearner(
            clip_model, self.classnames, n_ctx=node.N_CTX, ctx_init=node.CTX_INIT, csc=node.CSC,
            class_token_position=node.CLASS_TOKEN_POSITION, n_prompts=node.N_PROMPTS,
            init_all=node.INIT == "all",
        )
        router = Router(clip_model.visual.output_dim, node.N_PROMPTS, kind=node.ROUTER, hidden=node.ROUTER_HIDDEN,
                        temperature=node.TEMPERATURE, top_k=node.TOP_K)
        model = MixturePromptedCLIP(clip_model, learner, router, mix=node.MIX)
        has_router = any(True for _ in router.parameters())
        trainable = ["prompt_learner.ctx"] + (["router"] if has_router else [])
        self.model = self.setup_model(model, trainable=trainable)
        if cfg.MODEL.INIT_WEIGHTS:
            self.load_init_weights(self.model.prompt_learner, cfg.MODEL.INIT_WEIGHTS)
        # Two registered models, so checkpoints read prompt_learner/ (ctx) and router/ (its weights).
        optim = build_optimizer(self.model.prompt_learner, cfg.OPTIM)
        self.register_model("prompt_learner", self.model.prompt_learner, optim, build_lr_scheduler(optim, cfg.OPTIM))
        if has_router:
            router_optim_cfg = scaled_lr(cfg.OPTIM, node.ROUTER_LR_MULT)
            optim = build_optimizer(self.model.router, router_optim_cfg)
            self.register_model("router", self.model.router, optim, build_lr_scheduler(optim, router_optim_cfg))
        logger.info("Router: %s; mixing %s; training attack weights: %s", router, node.MIX, node.ATTACK_ROUTER)

    # ------------------------------------------------------------ training
    def adversarial_images(self, images: Tensor, labels: Tensor, text_features: Optional[Tensor]) -> Tensor:
        """APT's attack, with the router weights chosen by ``TRAINER.AMPT.ATTACK_ROUTER``."""
        with self.model.routing(ATTACK_ROUTES[self.cfg.TRAINER.AMPT.ATTACK_ROUTER]):
            return super().adversarial_images(images, labels, text_features)

    def adversarial_loss(self, logits: Tensor, labels: Tensor, images: Tensor, adv_images: Tensor,
                         text_features: Tensor, adv_features: Optional[Tensor] = None
                         ) -> Tuple[Tensor, Dict[str, float]]:
        """CE on the adversarial logits, plus the optional clean CE, TRADES KL and balance terms."""
        node = self.cfg.TRAINER.AMPT
        weights = self.model.routed_weights  # of the adversarial forward that gave ``logits``
        loss = F.cross_entropy(logits, labels)
        extra: Dict[str, float] = {}
        if node.CLEAN_CE_WEIGHT > 0 or node.TRADES_KL_WEIGHT > 0:
            clean_logits = self.model(images, text_features=text_features)
            if node.CLEAN_CE_WEIGHT > 0:
                clean_ce = F.cross_entropy(clean_logits, labels)
                loss = loss + node.CLEAN_CE_WEIGHT * clean_ce
                extra["clean_ce"] = clean_ce.item()
            if node.TRADES_KL_WEIGHT > 0:
                kl = F.kl_div(F.log_softmax(logits, dim=1), F.softmax(clean_logits, dim=1), reduction="batchmean")
                loss = loss + node.TRADES_KL_WEIGHT * kl
                extra["trades_kl"] = kl.item()
        if node.BALANCE_WEIGHT > 0:
            imbalance = math.log(weights.shape[1]) - weight_entropy(weights.mean(dim=0, keepdim=True))[0]
            loss = loss + node.BALANCE_WEIGHT * imbalance
            extra["imbalance"] = imbalance.item()
        self._accumulate_router_stats(weights.detach())
        extra["router_entropy"] = weight_entropy(weights.detach()).mean().item()
        return loss, extra

    # ------------------------------------------------------------ router statistics
    def before_epoch(self) -> None:
        super().before_epoch()
        self._weight_sum: Optional[Tensor] = None
        self._entropy_sum = 0.0
        self._routed = 0

    def _accumulate_router_stats(self, weights: Tensor) -> None:
        if getattr(self, "_weight_sum", None) is None:
            self._weight_sum, self._entropy_sum, self._routed = torch.zeros(weights.shape[1]), 0.0, 0
        self._weight_sum += weights.float().sum(dim=0).cpu()
        self._entropy_sum += float(weight_entropy(weights.float()).sum())
        self._routed += weights.shape[0]

    def router_stats(self) -> Optional[Dict[str, Any]]:
        """This epoch's mean weight per prompt and mean per-image entropy (nats) on the adversarial images."""
        if getattr(self, "_weight_sum", None) is None or not self._routed:
            return None
        mean = self._weight_sum / self._routed
        return {
            "epoch": self.epoch + 1,
            "mean_weights": [round(float(w), 5) for w in mean],
            "entropy": round(self._entropy_sum / self._routed, 5),  # mean over images; log K = uniform
            "entropy_of_mean": round(float(weight_entropy(mean[None])[0]), 5),  # low = a collapsed router
            "max_entropy": round(math.log(len(mean)), 5),
            "n_images": self._routed,
        }

    def after_epoch(self) -> None:
        stats = self.router_stats()
        if stats is not None:
            logger.info("router (epoch %d, %d adversarial images): mean weights %s, entropy %.3f "
                        "(uniform %.3f), entropy of the mean %.3f", stats["epoch"], stats["n_images"],
                        stats["mean_weights"], stats["entropy"], stats["max_entropy"], stats["entropy_of_mean"])
            for k, w in enumerate(stats["mean_weights"]):
                self.write_scalar(f"router/mean_weight_{k + 1}", w, stats["epoch"])
            self.write_scalar("router/entropy", stats["entropy"], stats["epoch"])
            self.write_scalar("router/entropy_of_mean", stats["entropy_of_mean"], stats["epoch"])
            if distributed.is_main():  # rank 0's share of the images under torchrun
                self._save_router_stats(stats)
        super().after_epoch()

    def _save_router_stats(self, stats: Dict[str, Any]) -> None:
        """Append ``stats`` to ``OUTPUT_DIR/router_stats.json`` (one entry per epoch, replaced on resume)."""
        path = f"{self.output_dir}/{ROUTER_STATS_FILE}"
        try:
            history = read_json(path)["epochs"]
        except FileNotFoundError:
            history = []
        history = [h for h in history if h["epoch"] < stats["epoch"]] + [stats]
        write_json({"epochs": history}, path)

    # ------------------------------------------------------------ evaluation
    def eval_prompt_model(self, prompt: str) -> Optional[nn.Module]:
        """``evaluate.py --prompt uniform``: the learned prompts mixed with weights 1/K."""
        if prompt != "uniform":
            return None
        with torch.no_grad():
            return FixedRouting(self.model, self.model.text_features(), route="uniform")
