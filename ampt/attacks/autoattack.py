"""AutoAttack "standard" through ``pyautoattack`` (fra31's code on PyPI).

Two things the library does not do for us:

- Target classes. Standard AutoAttack runs APGD-T and FAB-T against 9 target
  classes, which does not exist below 10 classes (APGD-T then indexes past
  the logits). We always set both to ``min(9, C - 1)`` from the true ``C``.
- Resumption. ``run_standard_evaluation(state_path=...)`` cannot restore its
  own state in pyautoattack 0.2.0 (the attack set is written to JSON as a
  string, so every reload fails the "different set of attacks" check, and a
  restored run never defines its predicted labels). Here ``state_path`` is a
  directory instead: the input is attacked in chunks of ``batch_size`` and
  each finished chunk is kept there, keyed by a hash of its images, labels,
  clean logits and the attack's settings, so an interrupted evaluation redoes
  only the unfinished chunk.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

import pyautoattack
import torch
from pyautoattack import AutoAttack as _LibAutoAttack
from torch import Tensor, nn

from ..errors import UserError
from .base import Attack

logger = logging.getLogger(__name__)

# Standard AutoAttack's number of target classes for APGD-T and FAB-T.
_STANDARD_TARGETS = 9
# APGD-T's targeted DLR loss reads the 4th-largest logit.
_MIN_CLASSES = 4


@contextlib.contextmanager
def _fork_rng(device: torch.device) -> Iterator[None]:
    """The library reseeds the global RNG (``torch.manual_seed``); give it a private copy."""
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            yield
        return
    module = getattr(torch, device.type)
    index = device.index if device.index is not None else module.current_device()
    with torch.random.fork_rng(devices=[index], device_type=device.type):
        yield


class AutoAttack(Attack):
    """AutoAttack of Croce & Hein, "Reliable Evaluation of Adversarial Robustness
    with an Ensemble of Diverse Parameter-free Attacks" (ICML 2020), version
    "standard": APGD-CE, APGD-T, FAB-T, Square. Threat model: white-box (plus
    the black-box Square), untargeted, L-inf ball of radius ``eps``/255 in
    pixel space. Parameter-free: no step size or step count.

    ``num_classes`` (the true number of classes, at least 4) is required.
    ``batch_size`` (default: the whole input) is both the library's batch size
    and the granularity of resumption through ``state_path`` (a directory).
    ``library`` names the package and version for result records.
    """

    parameter_free = True

    def __init__(self, model: nn.Module, eps: float, num_classes: Optional[int] = None,
                 seed: int = 0, batch_size: Optional[int] = None,
                 state_path: Union[str, Path, None] = None) -> None:
        super().__init__(model, eps, seed)
        if num_classes is None:
            raise ValueError("AutoAttack needs num_classes, the true number of classes of the task")
        self.check_num_classes(num_classes)
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        self.num_classes = int(num_classes)
        self.n_target_classes = min(_STANDARD_TARGETS, self.num_classes - 1)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.state_path = None if state_path is None else Path(state_path)
        self.version = "standard"
        self.library = f"pyautoattack {pyautoattack.__version__}"

    @classmethod
    def check_num_classes(cls, num_classes: int) -> None:
        if int(num_classes) < _MIN_CLASSES:
            raise UserError(
                f"standard AutoAttack needs at least {_MIN_CLASSES} classes (APGD-T's targeted "
                f"DLR loss); got num_classes={num_classes}. Use another attack (pgd, cw, tpgd)"
            )

    def _adversary(self, device: torch.device) -> _LibAutoAttack:
        adversary = _LibAutoAttack(self.get_logits, norm="Linf", eps=self.eps / 255,
                                   version=self.version, device=device, seed=self.seed)
        adversary.apgd_targeted.n_target_classes = self.n_target_classes
        adversary.fab.n_target_classes = self.n_target_classes
        return adversary

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        adversary = self._adversary(images.device)
        size = self.batch_size or images.shape[0]
        chunks = []
        with _fork_rng(images.device):
            for start in range(0, images.shape[0], size):
                stop = start + size
                chunks.append(self._attack_chunk(adversary, images[start:stop], labels[start:stop]))
        return torch.cat(chunks)

    def _attack_chunk(self, adversary: _LibAutoAttack, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            logits = self.get_logits(x)
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"the model returns {tuple(logits.shape)} logits but num_classes={self.num_classes}"
            )
        path = self._state_file(x, y, logits)
        if path is not None and path.exists():
            saved = torch.load(path, map_location=x.device, weights_only=True)
            adv = x.clone()
            adv[saved["index"]] = saved["adv"]
            logger.info("AutoAttack: restored %d images from %s", x.shape[0], path)
            return adv
        start = time.perf_counter()
        adv, _ = adversary.run_standard_evaluation(x, y, batch_size=x.shape[0])
        logger.debug("AutoAttack: %d images in %.1f s", x.shape[0], time.perf_counter() - start)
        if path is not None:
            index = (adv != x).flatten(1).any(dim=1).nonzero().squeeze(1)
            _save_atomic({"index": index.cpu(), "adv": adv[index].cpu()}, path)
        return adv

    def _state_file(self, x: Tensor, y: Tensor, logits: Tensor) -> Optional[Path]:
        if self.state_path is None:
            return None
        digest = hashlib.sha256(repr((self.hparams(), self.library)).encode())
        for tensor in (x, y, logits):
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return self.state_path / f"aa-{digest.hexdigest()[:32]}.pt"

    def hparams(self) -> Dict[str, Any]:
        return {**super().hparams(), "version": self.version, "num_classes": self.num_classes,
                "n_target_classes": self.n_target_classes}


def _save_atomic(obj: Dict[str, Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
