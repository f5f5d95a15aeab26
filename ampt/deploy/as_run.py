"""An exported folder as ``evaluate.py``'s run: its classifier attacked on the test set the artifact names.

:func:`load_exported_run` gives a :class:`~ampt.evaluation.run_loader.LoadedRun`
whose ``trainer`` is an :class:`ExportedModelRun`: the few things
:func:`~ampt.evaluation.evaluate_cli.evaluate_trainer` asks of a trainer
(config, test loader, the model and its learned modules, the evaluated
module), built from ``ampt_model.json`` and the loaded classifier. Records
go to the folder's own ``results.json`` and carry the run's weights digest,
so they compare with the run's. Unlike :mod:`ampt.deploy.loader`, this module
uses the config system and the dataset plug-ins (evaluate.py's side).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import torch
from torch import nn

from ..errors import UserError
from ..evaluation.run_loader import LoadedRun, apply_test_overrides, resolve_dataset_name
from ..models.interface import LEARNED
from ..plugins import load_plugins
from .artifact_format import is_artifact  # noqa: F401  (evaluate.py's test for an exported folder)
from .classifier import Classifier
from .loader import load_classifier


class ExportedModelRun:
    """What ``evaluate_trainer`` asks of a trainer, for an exported model (no training state)."""

    eval_prompt_modes = ()

    def __init__(self, classifier: Classifier, cfg: Any, data_manager: Any, device: torch.device) -> None:
        self.classifier = classifier
        self.cfg = cfg
        self.dm = data_manager
        self.test_loader = data_manager.test_loader
        self.num_classes = data_manager.num_classes
        self.device = device
        self.loaded_checkpoint = {"checkpoint_epoch": classifier.metadata["training"]["checkpoint_epoch"]}

    @property
    def model(self) -> nn.Module:
        return self.classifier.model

    @property
    def _models(self):
        """The learned modules by the names the trainer registered them under (the records' weights digest)."""
        return {name: getattr(self.model, name) for name in self.classifier.metadata["method"]["learned_modules"]}

    def get_model_names(self) -> List[str]:
        return list(self._models)

    def set_model_mode(self, mode: str = "train", names: Any = None) -> None:
        self.classifier.train(mode == "train")

    def eval_prompt_model(self, prompt: str) -> Optional[nn.Module]:
        if prompt == LEARNED:
            return self.classifier.evaluated
        raise UserError(f'--prompt "{prompt}": an exported model is evaluated with its own prompt only ("learned"); '
                        "evaluate other prompts on the run folder")


def load_exported_run(folder: Path, dataset: Optional[str] = None, root: str = "", batch_size: Optional[int] = None,
                      load_epoch: Optional[int] = None, seed: int = 0, subsample: Optional[str] = None) -> LoadedRun:
    """The exported model in ``folder`` and the test set of its training dataset (or ``dataset``), as a run."""
    if load_epoch is not None:
        raise UserError(f"--load-epoch: {folder} is an exported model, which holds one checkpoint; "
                        "pass the run folder to evaluate another epoch")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    classifier = load_classifier(folder, device=device)
    training = classifier.metadata["training"]
    load_plugins(training.get("engine", "builtin"))
    from ..engine.select import active_api

    api = active_api()
    cfg = api.get_cfg_default()
    for key, value in training["dataset_config"].items():
        cfg.DATASET[key] = tuple(value) if isinstance(value, list) else value
    preprocess = classifier.metadata["preprocess"]
    cfg.INPUT.SIZE = (preprocess["size"], preprocess["size"])
    cfg.INPUT.INTERPOLATION = preprocess["interpolation"]
    cfg.SEED = seed
    cfg.USE_CUDA = device.type == "cuda"
    cfg.ADV.TRAIN.EPS = float(training["train_eps"])
    cfg.DATALOADER.TEST.BATCH_SIZE = training["test_loader"]["batch_size"]
    cfg.DATALOADER.NUM_WORKERS = training["test_loader"]["num_workers"]
    apply_test_overrides(cfg, root, batch_size)
    if dataset is not None and resolve_dataset_name(dataset) != training["dataset"]:
        cfg.DATASET.NAME = resolve_dataset_name(dataset)
        cfg.DATASET.SUBSAMPLE_CLASSES = "all"
        cfg.DATASET.NUM_SHOTS = -1
    if subsample is not None:
        cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.freeze()
    data_manager = api.DataManager(cfg)
    classnames = list(data_manager.dataset.classnames)
    if classnames != classifier.classnames:
        classifier.set_classes(classnames)  # another dataset or the other half of the classes
    run = ExportedModelRun(classifier, cfg, data_manager, device)
    return LoadedRun(run, training["checkpoint_epoch"], training["dataset"], bool(training["adversarial"]))
