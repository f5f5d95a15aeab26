"""CoOp (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022).

Learned context vectors ``[SOS][v_1..v_M][class][.][EOS]`` (unified or
class-specific; class token at the end, middle or front), trained with
cross-entropy on clean images while CLIP stays frozen. Built from the shared
modules: :class:`~ampt.models.PromptLearner` and
:class:`~ampt.models.PromptedCLIP`. Checkpoints hold the context vectors only.
"""
from __future__ import annotations

from typing import Any, Dict

from yacs.config import CfgNode as CN

from ampt.api import TRAINER_REGISTRY
from ampt.trainer_base.clip import ClipTrainer
from ampt.errors import UserError
from ampt.objectives import TrainingObjective, TrainingStep
from ampt.method_kits.coop_prompt import COOP_FOLDER_KEYS, add_coop_prompt_keys, build_coop_prompt_model, coop_folder_tag


@TRAINER_REGISTRY.register()
class CoOp(ClipTrainer):
    """Context Optimization (https://arxiv.org/abs/2109.01134)."""

    run_folder_keys = tuple(f"TRAINER.COOP.{key}" for key in COOP_FOLDER_KEYS)

    @classmethod
    def run_folder_tag(cls, cfg: CN) -> str:
        return coop_folder_tag(cfg.TRAINER.COOP)

    @staticmethod
    def add_config(cfg: CN) -> None:
        cfg.TRAINER.COOP = CN()
        add_coop_prompt_keys(cfg.TRAINER.COOP)

    def check_cfg(self, cfg: Any) -> None:
        super().check_cfg(cfg)
        if cfg.ADV.TRAIN.ATTACK_LOSS:
            raise UserError(f'ADV.TRAIN.ATTACK_LOSS "{cfg.ADV.TRAIN.ATTACK_LOSS}": CoOp trains on clean images, '
                            "without a training attack; leave it empty")
        self.objective = TrainingObjective(cfg, attack=False)

    def build_model(self) -> None:
        build_coop_prompt_model(self, self.cfg.TRAINER.COOP)
        self.objective.check_model(self.model)

    def run_metadata(self) -> Dict[str, Any]:
        return {**super().run_metadata(), **self.objective.metadata()}

    def forward_backward(self, batch: Dict[str, Any]) -> Dict[str, float]:
        image, label = self.parse_batch_train(batch)
        with self.autocast():
            step = TrainingStep.on_clean_images(self.model, image, label, self.model.text_features(),
                                               self.frozen_zero_shot())
            loss, extra = self.objective.loss(step)
        self.model_backward_and_update(loss)
        summary = {
            "loss": loss.item(),
            "acc": 100.0 * (step.adv_logits.argmax(dim=1) == label).float().mean().item(),
            **extra,
        }
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary
