"""One training run as ``train.py`` arguments: its merged config, folder and command line."""
from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

from yacs.config import CfgNode as CN

from .layout import run_dir

REPO_ROOT = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=None)
def trainer_class(name: str) -> type:
    """The registered trainer class (plug-ins loaded once); an unknown name lists the valid ones."""
    from ..engine.select import active_api
    from ..plugins import load_plugins

    load_plugins("builtin")
    return active_api().TRAINER_REGISTRY.get(name)


def is_adversarial(trainer: str) -> bool:
    from ..trainer_base.adversarial import AdversarialClipTrainer

    return issubclass(trainer_class(trainer), AdversarialClipTrainer)


@functools.lru_cache(maxsize=4096)
def build_config(trainer: str, dataset_config: str, config: str, seed: int, opts: Tuple[str, ...]) -> CN:
    """The config ``train.py`` would build (same merge order and key checks)."""
    from ..config import setup_cfg

    args = argparse.Namespace(trainer=trainer, dataset_config_file=dataset_config, config_file=config,
                              seed=seed, opts=list(opts))
    return setup_cfg(args, trainer_class(trainer))


@dataclass(frozen=True)
class RunSpec:
    """``train.py --trainer T --dataset-config-file D --config-file C --seed S [KEY VALUE ...]``."""

    trainer: str
    dataset_config: str
    config: str
    seed: int
    opts: Tuple[str, ...] = ()
    data_root: str = ""

    def config_node(self) -> CN:
        return build_config(self.trainer, self.dataset_config, self.config, self.seed, self.opts)

    def run_dir(self, output: str) -> Path:
        cfg, cls = self.config_node(), trainer_class(self.trainer)
        return run_dir(output, self.trainer, self.dataset_config, self.config, self.seed, self.opts, cfg,
                       is_adversarial(self.trainer), method_tag=cls.run_folder_tag(cfg) if cls.run_folder_keys else "",
                       method_keys=cls.run_folder_keys)

    def train_command(self, output_dir: Path) -> List[str]:
        """The command line a user would type for this run."""
        return [sys.executable, str(REPO_ROOT / "train.py"), "--root", self.data_root, "--seed", str(self.seed),
                "--trainer", self.trainer, "--dataset-config-file", self.dataset_config,
                "--config-file", self.config, "--output-dir", str(output_dir), *self.opts]
