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
:class:`~ampt.trainer_base.adversarial.AdversarialClipTrainer`); only the router and the
weighted sum depend on the image.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from ampt.trainer_base.adversarial import AdversarialClipTrainer
from ampt.api import TRAINER_REGISTRY
from ampt.errors import UserError
from ampt.precision import add_precision_key
from ampt.models import PromptLearner
from ampt.objectives import TrainingStep
from ampt.models.mixture import MIX_MODES, FixedRouting, MixturePromptedCLIP
from ampt.models.prompt_init import orthogonal_contexts, split_templates, template_contexts
from ampt.models.router import ROUTER_KINDS, Router, weight_entropy
from ampt.utils import distributed
from ampt.models.router_stats import EpochAccumulator, TestWeightLog, bank_summary
from ampt.sweep.layout import num
from ampt.models.router_stats import update_router_stats_file

logger = logging.getLogger(__name__)

INIT_MODES = ("random", "first", "all", "orthogonal", "templates")
WORDLESS_INITS = ("random", "orthogonal")
ROUTER_INPUTS = ("adversarial", "clean")
# ATTACK_ROUTER -> the model's route mode during the training attack
ATTACK_ROUTES = {"full": "learned", "uniform": "uniform", "detached": "detached"}


def check_ampt_cfg(node: CN) -> None:
    """Refuse invalid or unused ``TRAINER.AMPT`` settings before anything is built."""
    if node.N_PROMPTS < 1 or node.N_CTX < 1:
        raise UserError(f"TRAINER.AMPT.N_PROMPTS and N_CTX must be >= 1 (got {node.N_PROMPTS}, {node.N_CTX})")
    checks = (("INIT", INIT_MODES), ("ROUTER", ROUTER_KINDS), ("MIX", MIX_MODES), ("ATTACK_ROUTER", tuple(ATTACK_ROUTES)),
              ("ROUTER_INPUT", ROUTER_INPUTS))
    for key, valid in checks:
        if node[key] not in valid:
            raise UserError(f'TRAINER.AMPT.{key} "{node[key]}" is not one of {", ".join(valid)}')
    if (node.INIT in WORDLESS_INITS) != (node.CTX_INIT == ""):
        raise UserError(
            f'TRAINER.AMPT.INIT "{node.INIT}" with CTX_INIT "{node.CTX_INIT}": INIT first/all/templates needs '
            'CTX_INIT words (e.g. "a photo of a"), and CTX_INIT words need INIT first, all or templates'
        )
    if node.INIT == "templates" and len(split_templates(node.CTX_INIT)) != node.N_PROMPTS:
        raise UserError(f'TRAINER.AMPT.INIT templates needs N_PROMPTS ({node.N_PROMPTS}) "|"-separated phrases '
                         f'in CTX_INIT (got "{node.CTX_INIT}")')
    if node.INIT in ("orthogonal", "templates") and node.CSC:
        raise UserError(f"TRAINER.AMPT.INIT {node.INIT} is for unified contexts: set CSC False or INIT random")
    if node.N_PROMPTS == 1 and node.ROUTER != "uniform":
        raise UserError("TRAINER.AMPT.N_PROMPTS 1 leaves the router nothing to weigh: set ROUTER uniform")
    if node.ROUTER == "uniform":
        defaults = (("TEMPERATURE", 1.0), ("TOP_K", 0), ("ATTACK_ROUTER", "full"), ("ROUTER_LR_MULT", 1.0),
                    ("ROUTER_INPUT_SCALE", 1.0), ("ROUTER_INPUT", "adversarial"))
        unused = [k for k, default in defaults if node[k] != default]
        if unused:
            raise UserError(f"TRAINER.AMPT.ROUTER uniform does not use {unused}: leave them at their defaults")
    for key in ("ROUTER_LR_MULT", "ROUTER_INPUT_SCALE"):
        if node[key] <= 0:
            raise UserError(f"TRAINER.AMPT.{key} must be > 0 (got {node[key]})")
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
    run_folder_keys = tuple(f"TRAINER.AMPT.{key}" for key in (
        "N_PROMPTS", "N_CTX", "CTX_INIT", "INIT", "CSC", "CLASS_TOKEN_POSITION", "ROUTER", "ROUTER_HIDDEN",
        "ROUTER_LR_MULT", "TEMPERATURE", "TOP_K", "MIX", "ATTACK_ROUTER", "CLEAN_CE_WEIGHT", "TRADES_KL_WEIGHT",
        "BALANCE_WEIGHT"))

    @classmethod
    def run_folder_tag(cls, cfg: CN) -> str:
        v = cfg.TRAINER.AMPT
        init = f"init-{v.INIT}" + (f"-{v.CTX_INIT.replace(' ', '_')}" if v.CTX_INIT else "")
        hidden = f"h{v.ROUTER_HIDDEN}" if v.ROUTER == "mlp" else ""
        return (f"k{v.N_PROMPTS}_l{v.N_CTX}_{v.ROUTER}{hidden}_lrx{num(v.ROUTER_LR_MULT)}_t{num(v.TEMPERATURE)}"
                f"_top{v.TOP_K}_{v.MIX}_{init}_csc{v.CSC}_ctp{v.CLASS_TOKEN_POSITION}_ce{num(v.CLEAN_CE_WEIGHT)}"
                f"_kl{num(v.TRADES_KL_WEIGHT)}_bal{num(v.BALANCE_WEIGHT)}_atk{v.ATTACK_ROUTER}")

    @staticmethod
    def add_config(cfg: CN) -> None:
        cfg.TRAINER.AMPT = CN()
        c = cfg.TRAINER.AMPT
        c.N_PROMPTS = 4  # K, number of prompts (>= 1; 1 with ROUTER uniform is one long prompt, i.e. APT)
        c.N_CTX = 4  # L, context tokens per prompt (>= 1); CTX_INIT's token count overrides it
        c.CTX_INIT = ""  # words to start from, e.g. "a photo of a"; "" with INIT random
        # random (N(0, 0.02) per prompt) | first (CTX_INIT for prompt 1) | all (CTX_INIT for every prompt)
        # | orthogonal (random, mutually orthogonal) | templates (CTX_INIT: N_PROMPTS phrases "a|b|..", <= N_CTX tokens)
        c.INIT = "random"
        c.CSC = False  # class-specific contexts (K x C of them) instead of unified ones
        c.CLASS_TOKEN_POSITION = "end"  # end | middle | front
        c.ROUTER = "linear"  # linear | mlp | uniform (no router: weights 1/K)
        c.ROUTER_HIDDEN = 0  # mlp hidden width (>= 0; 0 = the image feature size); only with ROUTER mlp
        c.TEMPERATURE = 1.0  # softmax temperature of the router (> 0; lower is sharper)
        c.ROUTER_INPUT_SCALE = 1.0  # the router reads this x the unit-norm image feature (> 0; e.g. 100 = CLIP's scale)
        c.ROUTER_INPUT = "adversarial"  # training: router reads the attacked (adversarial) or the clean image's feature
        c.ROUTER_LR_MULT = 1.0  # router learning rate (and warm-up LR) = OPTIM's x this (> 0); prompts use OPTIM's
        c.TOP_K = 0  # keep the TOP_K largest router weights per image, renormalized (0 = dense; <= N_PROMPTS)
        c.MIX = "features"  # features (mix normalized text features) | logits (mix per-prompt logits)
        c.CLEAN_CE_WEIGHT = 0.0  # weight (>= 0) of cross-entropy on the clean images
        c.TRADES_KL_WEIGHT = 0.0  # weight (>= 0) of KL(p_clean || p_adv), batch mean (TRADES-style)
        c.BALANCE_WEIGHT = 0.0  # weight (>= 0) of log K - entropy of the batch-mean router weights
        c.ATTACK_ROUTER = "full"  # training attack's weights: full (through the router) | uniform | detached
        add_precision_key(c)

    def check_cfg(self, cfg: Any) -> None:
        super().check_cfg(cfg)
        check_ampt_cfg(cfg.TRAINER.AMPT)

    def objective_terms(self, cfg: Any) -> Sequence[Tuple[str, float]]:
        """AMPT's weight keys as loss terms after ``ADV.TRAIN.LOSS``'s: clean CE, TRADES-style KL, router balance."""
        node = cfg.TRAINER.AMPT
        return (("clean_ce", float(node.CLEAN_CE_WEIGHT)), ("clean_adv_kl", float(node.TRADES_KL_WEIGHT)),
                ("router_balance", float(node.BALANCE_WEIGHT)))

    def run_metadata(self) -> Dict[str, Any]:
        node = self.cfg.TRAINER.AMPT
        return {**super().run_metadata(), "n_prompts": node.N_PROMPTS, "n_ctx": node.N_CTX, "router": node.ROUTER}

    # ------------------------------------------------------------ model
    def build_model(self) -> None:
        cfg, node = self.cfg, self.cfg.TRAINER.AMPT
        clip_model = self.load_clip_model()
        learner = PromptLearner(
            clip_model, self.classnames, n_ctx=node.N_CTX, ctx_init=node.CTX_INIT if node.INIT in ("first", "all") else "",
            csc=node.CSC, class_token_position=node.CLASS_TOKEN_POSITION, n_prompts=node.N_PROMPTS,
            init_all=node.INIT == "all",
        )
        self._init_contexts_apart(clip_model, learner)
        router = Router(clip_model.visual.output_dim, node.N_PROMPTS, kind=node.ROUTER, hidden=node.ROUTER_HIDDEN,
                        temperature=node.TEMPERATURE, top_k=node.TOP_K, input_scale=node.ROUTER_INPUT_SCALE)
        model = MixturePromptedCLIP(clip_model, learner, router, mix=node.MIX)
        has_router = any(True for _ in router.parameters())
        trainable = ["prompt_learner.ctx"] + (["router"] if has_router else [])
        # Two registered models, so checkpoints read prompt_learner/ (ctx) and router/ (its weights).
        self.install_model(model, trainable, more_learned={"router": scaled_lr(cfg.OPTIM, node.ROUTER_LR_MULT)}
                           if has_router else None)
        logger.info("Router: %s; mixing %s; training attack weights: %s; training router input: %s image",
                    router, node.MIX, node.ATTACK_ROUTER, node.ROUTER_INPUT)

    def _init_contexts_apart(self, clip_model: nn.Module, learner: PromptLearner) -> None:
        """``INIT orthogonal | templates``: replace the random contexts so the K prompts start apart."""
        node = self.cfg.TRAINER.AMPT
        if node.INIT not in ("orthogonal", "templates"):
            return
        with torch.random.fork_rng(devices=[]):  # the router's initialisation stays what it is without this key
            if node.INIT == "orthogonal":
                ctx = orthogonal_contexts(learner.ctx.shape)
            else:
                ctx = template_contexts(clip_model, node.CTX_INIT, node.N_PROMPTS, learner.n_ctx)
        with torch.no_grad():
            learner.ctx.copy_(ctx)
        logger.info("Prompt contexts initialised %s", "orthogonal" if node.INIT == "orthogonal"
                    else f"from the templates {split_templates(node.CTX_INIT)}")

    # ------------------------------------------------------------ training
    def forward_backward(self, batch: Dict[str, Any]) -> Dict[str, float]:
        """APT's step; with ``ROUTER_INPUT clean`` every forward of the step routes on the clean images."""
        if self.cfg.TRAINER.AMPT.ROUTER_INPUT != "clean":
            return super().forward_backward(batch)
        images = self.parse_batch_train(batch)[0]
        with torch.no_grad(), self.autocast():
            clean_features = self.model.encode_image(images)
        with self.model.router_reads(clean_features):
            return super().forward_backward(batch)

    def model_backward_and_update(self, loss: Tensor, names: Any = None) -> None:
        """The engine's update; the step's gradient norms (prompts, router) go into the epoch's statistics."""
        super().model_backward_and_update(loss, names)
        scale = float(self.scaler.get_scale()) if getattr(self, "scaler", None) is not None else 1.0
        norms = {}
        for name in self.get_model_names():
            grads = [p.grad.detach().float().norm() for p in self._models[name].parameters() if p.grad is not None]
            if grads:
                norms[name] = float(torch.stack(grads).norm()) / scale
        self._epoch_stats().add_grad_norms(norms)

    def adversarial_images(self, images: Tensor, labels: Tensor, text_features: Optional[Tensor]) -> Tensor:
        """APT's attack, with the router weights chosen by ``TRAINER.AMPT.ATTACK_ROUTER``."""
        with self.model.routing(ATTACK_ROUTES[self.cfg.TRAINER.AMPT.ATTACK_ROUTER]):
            return super().adversarial_images(images, labels, text_features)

    def observe_step(self, step: TrainingStep) -> Dict[str, float]:
        """The adversarial forward's router weights go into the epoch's statistics; their mean entropy is logged."""
        weights = step.adv_router_weights.detach()
        self._accumulate_router_stats(weights)
        return {"router_entropy": weight_entropy(weights).mean().item()}

    # ------------------------------------------------------------ router statistics
    def _epoch_stats(self) -> EpochAccumulator:
        if getattr(self, "_router_epoch", None) is None:
            self._router_epoch = EpochAccumulator(self.cfg.TRAINER.AMPT.N_PROMPTS)
        return self._router_epoch

    def before_train(self) -> None:
        super().before_train()
        if self.start_epoch == 0 and self.start_epoch < self.max_epoch:
            self._update_router_stats_file(init={"epoch": 0, **self._bank_stats()})

    def before_epoch(self) -> None:
        super().before_epoch()
        self._router_epoch = EpochAccumulator(self.cfg.TRAINER.AMPT.N_PROMPTS)

    def _accumulate_router_stats(self, weights: Tensor) -> None:
        self._epoch_stats().add_weights(weights)

    @torch.no_grad()
    def _bank_stats(self) -> Dict[str, Any]:
        """Pairwise cosine of the K prompts' text features (mean over classes), now."""
        with self.autocast():
            return bank_summary(self.model.text_features())

    def router_stats(self) -> Optional[Dict[str, Any]]:
        """This epoch's router statistics on the training forward's images (the adversarial ones)."""
        summary = self._epoch_stats().summary()
        return None if summary is None else {"epoch": self.epoch + 1, **summary, **self._bank_stats()}

    def after_epoch(self) -> None:
        stats = self.router_stats()
        if stats is not None:
            grads = stats.get("grad_norm", {})
            logger.info("router (epoch %d, %d adversarial images): mean weights %s, entropy %.3f "
                        "(uniform %.3f), entropy of the mean %.3f, TV from the batch mean %.4f, logit std %.2e, "
                        "prompt-bank cosine %s, grad norm %s", stats["epoch"], stats["n_images"],
                        stats["mean_weights"], stats["entropy"], stats["max_entropy"], stats["entropy_of_mean"],
                        stats["tv_from_batch_mean"], stats["router_logit_std"], stats["bank_cosine"], grads)
            for k, w in enumerate(stats["mean_weights"]):
                self.write_scalar(f"router/mean_weight_{k + 1}", w, stats["epoch"])
            for key in ("entropy", "entropy_of_mean", "tv_from_batch_mean", "router_logit_std", "bank_cosine"):
                if stats[key] is not None:
                    self.write_scalar(f"router/{key}", stats[key], stats["epoch"])
            for name, value in grads.items():
                self.write_scalar(f"router/grad_norm_{name}", value, stats["epoch"])
            if distributed.is_main():  # rank 0's share of the images under torchrun
                self._update_router_stats_file(epoch=stats)
        super().after_epoch()

    def _update_router_stats_file(self, epoch: Optional[Dict[str, Any]] = None, **sections: Any) -> None:
        update_router_stats_file(self.output_dir, epoch=epoch, **sections)

    _test_weights: Optional[TestWeightLog] = None  # set while final_evaluation runs

    def robust_test_observer(self) -> Optional[TestWeightLog]:
        return self._test_weights

    def final_evaluation(self) -> None:
        """The clean and robust test, then the router's weights on that split, clean and attacked.

        The weights are read off the robust test's own forwards (no second attack); without an
        ``ADV.TEST`` attack, a clean pass gives the clean ones.
        """
        routed = self.cfg.TRAINER.AMPT.ROUTER != "uniform"
        self._test_weights = TestWeightLog(lambda: self.model.last_weights) if routed else None
        try:
            super().final_evaluation()
        finally:
            log, self._test_weights = self._test_weights, None
        if log is None:
            return
        stats = {**self.routing_test_stats(log), "bank": self._bank_stats()}
        split = stats["split"]
        logger.info("router on %s (%d images): MI(weights; label) clean %.4f, attacked %s; "
                    "MI(weights; clean vs attacked) %s nats", split, stats["n_images"], stats["clean"]["mi_label"],
                    stats.get("attacked", {}).get("mi_label"), stats.get("mi_clean_vs_attacked"))
        self._update_router_stats_file(test=stats)

    # ------------------------------------------------------------ evaluation
    def eval_prompt_model(self, prompt: str) -> Optional[nn.Module]:
        """``evaluate.py --prompt uniform``: the learned prompts mixed with weights 1/K."""
        if prompt != "uniform":
            return None
        with torch.no_grad():
            return FixedRouting(self.model, self.model.text_features(), route="uniform")
