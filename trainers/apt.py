"""APT (Li et al., "One Prompt Word is Enough to Boost Adversarial Robustness for
Pre-trained Vision-Language Models", CVPR 2024, arXiv 2403.01849).

CoOp's learned prompt (unified or class-specific context, class token at the
end, middle or front, random or word init) trained with cross-entropy on
adversarial images only, CLIP frozen. The training attack and its prompt
modes (``ADV.TRAIN.*``, also ``train.py --eps --alpha --steps --adv-prompt``)
and the clean + robust final test come from
:class:`~ampt.trainer_base.adversarial.AdversarialClipTrainer`. APT's trainer read its
settings from ``TRAINER.COOP`` and flags only; here they are ``TRAINER.APT``
keys, settable from YAML and ``KEY VALUE`` overrides, and ``TRAINER.COOP.*``
(APT's command lines) is read as ``TRAINER.APT.*``.
"""
from __future__ import annotations

from yacs.config import CfgNode as CN

from ampt.trainer_base.adversarial import AdversarialClipTrainer
from ampt.api import TRAINER_REGISTRY
from ampt.method_kits.coop_prompt import COOP_FOLDER_KEYS, add_coop_prompt_keys, build_coop_prompt_model, coop_folder_tag


@TRAINER_REGISTRY.register()
class APT(AdversarialClipTrainer):
    """Adversarial Prompt Tuning: one CoOp prompt, cross-entropy on PGD images."""

    cfg_node = "APT"
    # APT's own scripts set its prompt through CoOp's node: TRAINER.COOP.N_CTX etc. are read as TRAINER.APT.*
    config_aliases = {"TRAINER.COOP": "TRAINER.APT"}
    run_folder_keys = tuple(f"TRAINER.APT.{key}" for key in COOP_FOLDER_KEYS)

    @classmethod
    def run_folder_tag(cls, cfg: CN) -> str:
        return coop_folder_tag(cfg.TRAINER.APT)

    @staticmethod
    def add_config(cfg: CN) -> None:
        cfg.TRAINER.APT = CN()
        add_coop_prompt_keys(cfg.TRAINER.APT)

    def build_model(self) -> None:
        build_coop_prompt_model(self, self.cfg.TRAINER.APT)
