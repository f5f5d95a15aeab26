"""AutoAttack and its single attacks through ``pyautoattack`` (fra31's code on PyPI).

Registered names (``evaluate.py --attack``):

- ``aa``: version "standard" (APGD-CE, APGD-T, FAB-T, Square 5,000 queries).
- ``aa-plus``: version "plus" (APGD-CE and APGD-DLR with 5 restarts, FAB and
  FAB-T, Square, APGD-T).
- ``aa-rand``: version "rand" for randomized defenses (APGD-CE and APGD-DLR,
  EOT over 20 samples).
- ``aa-custom``: version "custom" with the attack list in ``options``, e.g.
  ``apgd-ce,apgd-t`` (FARE, CLIPure) or ``apgd-ce,apgd-dlr`` (FAP); each
  attack keeps its "standard" settings (1 restart, Square 5,000 queries).
- ``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``fab-t``, ``square``: one attack of
  the ensemble with its standard settings; ``steps`` (iterations; Square:
  queries), ``restarts`` and ``eot_iter`` (APGD) may be changed.

Two things the library does not do for us:

- Target classes. APGD-T and FAB-T target 9 classes, which do not exist below
  10 classes (APGD-T then indexes past the logits). We always set both to
  ``min(9, C - 1)`` from the true ``C``.
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
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import pyautoattack
import torch
from pyautoattack import AutoAttack as _LibAutoAttack
from torch import Tensor, nn

from ..errors import UserError
from .base import Attack

logger = logging.getLogger(__name__)

# APGD-T's and FAB-T's number of target classes in the standard version.
_STANDARD_TARGETS = 9
# The DLR losses read the 3rd (APGD-DLR) and 4th (APGD-T) largest logits.
_MIN_CLASSES = {"apgd-dlr": 3, "apgd-t": 4}
LIBRARY_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
VERSION_ATTACKS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}


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


def parse_attack_list(options: str) -> List[str]:
    """``"apgd-ce, apgd-t"`` -> ``["apgd-ce", "apgd-t"]``; an unknown or repeated name is one line with the choices."""
    names = [n.strip() for n in str(options or "").split(",") if n.strip()]
    if not names:
        raise UserError("aa-custom needs its attacks, e.g. apgd-ce,apgd-t (evaluate.py --aa-attacks, sweep key "
                        f"aa_attacks); valid: {', '.join(LIBRARY_ATTACKS)}")
    unknown = [n for n in names if n not in LIBRARY_ATTACKS]
    if unknown:
        raise UserError(f"aa-custom: unknown attack {', '.join(unknown)}; valid: {', '.join(LIBRARY_ATTACKS)}")
    if len(set(names)) != len(names):
        raise UserError(f"aa-custom: an attack is listed twice in {options!r}")
    return names


class AutoAttack(Attack):
    """AutoAttack of Croce & Hein, "Reliable Evaluation of Adversarial Robustness
    with an Ensemble of Diverse Parameter-free Attacks" (ICML 2020), version
    "standard": APGD-CE, APGD-T, FAB-T, Square. Threat model: white-box (plus
    the black-box Square), untargeted, L-inf ball of radius ``eps``/255 in
    pixel space. Parameter-free: no step size or step count.

    ``num_classes`` (the true number of classes) is required.
    ``batch_size`` (default: the whole input) is both the library's batch size
    and the granularity of resumption through ``state_path`` (a directory).
    ``library`` names the package and version for result records.
    """

    parameter_free = True
    default_steps: Optional[int] = None
    version = "standard"
    access = "white-box+black-box"

    def __init__(self, model: nn.Module, eps: float, num_classes: Optional[int] = None,
                 seed: int = 0, batch_size: Optional[int] = None,
                 state_path: Union[str, Path, None] = None, options: str = "", bpda: bool = False,
                 steps: Optional[int] = None, restarts: int = 1, eot_iter: int = 1) -> None:
        super().__init__(model, eps, seed, bpda=bpda)
        if num_classes is None:
            raise ValueError("AutoAttack needs num_classes, the true number of classes of the task")
        self.attacks = self._attack_list(options)
        self.check_num_classes(num_classes, self.attacks)
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        self.num_classes = int(num_classes)
        self.n_target_classes = min(_STANDARD_TARGETS, self.num_classes - 1)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.state_path = None if state_path is None else Path(state_path)
        self.steps = self.default_steps if steps is None else int(steps)
        self.restarts = int(restarts)
        self.eot_iter = int(eot_iter)
        self.library = f"pyautoattack {pyautoattack.__version__}"

    def _attack_list(self, options: str) -> List[str]:
        return list(VERSION_ATTACKS[self.version])

    def get_logits(self, images: Tensor) -> Tensor:
        """fp32 logits: the library's buffers are fp32 (a bf16/fp16 model's logits are cast, not its forward)."""
        return self.model(images).float()

    @classmethod
    def check_num_classes(cls, num_classes: int, attacks: Optional[Sequence[str]] = None) -> None:
        attacks = VERSION_ATTACKS.get(cls.version, ()) if attacks is None else attacks
        needs = max([_MIN_CLASSES.get(a, 2) for a in attacks] or [2])
        if int(num_classes) < needs:
            raise UserError(
                f"{cls.__name__} runs {', '.join(attacks)}, which needs at least {needs} classes (the DLR loss); "
                f"got num_classes={num_classes}. Use another attack (pgd, cw, tpgd, apgd-ce)"
            )

    def configure(self, adversary: _LibAutoAttack) -> None:
        """Settings beyond the version's: target classes (always), and a single attack's own."""
        adversary.apgd_targeted.n_target_classes = self.n_target_classes
        adversary.fab.n_target_classes = self.n_target_classes

    def _adversary(self, device: torch.device) -> _LibAutoAttack:
        kwargs: Dict[str, Any] = {}
        if self.version == "custom":
            kwargs["attacks"] = list(self.attacks)
        adversary = _LibAutoAttack(self.get_logits, norm="Linf", eps=self.eps / 255,
                                   version=self.version, device=device, seed=self.seed, **kwargs)
        self.configure(adversary)
        return adversary

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        adversary = self._adversary(images.device)
        self._settings = _library_settings(adversary, self.attacks)
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

    def config(self) -> Dict[str, Any]:
        """The record's ``attack_config``: the version, its attacks and each one's settings as run."""
        settings = getattr(self, "_settings", None) or _library_settings(self._adversary(torch.device("cpu")), self.attacks)
        return {**super().config(), "library": self.library, "version": self.version, "attacks": list(self.attacks),
                "n_target_classes": self.n_target_classes, "settings": settings}


class AutoAttackPlus(AutoAttack):
    """AutoAttack version "plus": APGD-CE and APGD-DLR (5 restarts), FAB, Square, APGD-T, FAB-T."""

    version = "plus"


class AutoAttackRand(AutoAttack):
    """AutoAttack version "rand", for randomized defenses: APGD-CE and APGD-DLR with EOT over 20 samples."""

    version = "rand"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eot_iter = 20


class AutoAttackCustom(AutoAttack):
    """AutoAttack version "custom": the attacks listed in ``options`` (e.g. ``apgd-ce,apgd-t``), each with its
    "standard" settings: APGD 1 restart, APGD-T and FAB-T ``min(9, C - 1)`` targets, Square 5,000 queries."""

    version = "custom"
    takes_options = True

    def _attack_list(self, options: str) -> List[str]:
        return parse_attack_list(options)

    def configure(self, adversary: _LibAutoAttack) -> None:
        super().configure(adversary)
        adversary.apgd.n_restarts = 1
        adversary.fab.n_restarts = 1
        adversary.square.n_queries = 5000

    def hparams(self) -> Dict[str, Any]:
        return {**super().hparams(), "attacks": ",".join(self.attacks)}


class _SingleAutoAttack(AutoAttackCustom):
    """One attack of the ensemble, with its standard settings; steps, restarts and EOT may be changed."""

    name = ""
    parameter_free = False
    default_steps = 100
    access = "white-box"
    takes_options = False
    takes_restarts = True
    takes_eot = True

    def _attack_list(self, options: str) -> List[str]:
        return [self.name]

    def configure(self, adversary: _LibAutoAttack) -> None:
        super().configure(adversary)
        for apgd in (adversary.apgd, adversary.apgd_targeted):
            apgd.n_iter = self.steps
            apgd.n_restarts = self.restarts
            apgd.eot_iter = self.eot_iter

    def hparams(self) -> Dict[str, Any]:
        return {**Attack.hparams(self), "attack": self.name, "steps": self.steps, "restarts": self.restarts,
                "eot_iter": self.eot_iter, "num_classes": self.num_classes, "n_target_classes": self.n_target_classes}


class APGDCE(_SingleAutoAttack):
    """APGD on the cross-entropy (Croce & Hein 2020), 100 iterations, 1 restart."""

    name = "apgd-ce"


class APGDDLR(_SingleAutoAttack):
    """APGD on the DLR loss (Croce & Hein 2020), 100 iterations, 1 restart."""

    name = "apgd-dlr"


class APGDT(_SingleAutoAttack):
    """Targeted APGD on the DLR loss against ``min(9, C - 1)`` target classes, 100 iterations each."""

    name = "apgd-t"


class FABT(_SingleAutoAttack):
    """Targeted FAB (Croce & Hein 2020) against ``min(9, C - 1)`` target classes, 100 iterations each."""

    name = "fab-t"
    takes_restarts = False  # the library runs FAB-T with one restart per target
    takes_eot = False

    def configure(self, adversary: _LibAutoAttack) -> None:
        super().configure(adversary)
        adversary.fab.n_iter = self.steps


class Square(_SingleAutoAttack):
    """Square Attack (Andriushchenko et al. 2020): black-box, score-based, ``steps`` = queries (5,000)."""

    name = "square"
    default_steps = 5000
    access = "black-box"
    takes_eot = False

    def configure(self, adversary: _LibAutoAttack) -> None:
        AutoAttackCustom.configure(self, adversary)
        adversary.square.n_queries = self.steps
        adversary.square.n_restarts = self.restarts


def _library_settings(adversary: _LibAutoAttack, attacks: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """What each listed attack will run with, read back from the library's objects."""
    out: Dict[str, Dict[str, Any]] = {}
    for name in attacks:
        if name in ("apgd-ce", "apgd-dlr"):
            a = adversary.apgd
            out[name] = {"n_iter": a.n_iter, "n_restarts": a.n_restarts, "eot_iter": a.eot_iter, "rho": a.thr_decr}
        elif name == "apgd-t":
            a = adversary.apgd_targeted
            out[name] = {"n_iter": a.n_iter, "n_restarts": a.n_restarts, "eot_iter": a.eot_iter,
                         "n_target_classes": a.n_target_classes}
        elif name in ("fab", "fab-t"):
            a = adversary.fab
            out[name] = {"n_iter": a.n_iter, "n_restarts": 1 if name == "fab-t" else a.n_restarts}
            if name == "fab-t":
                out[name]["n_target_classes"] = a.n_target_classes
        elif name == "square":
            a = adversary.square
            out[name] = {"n_queries": a.n_queries, "n_restarts": a.n_restarts, "p_init": a.p_init}
    return out


def _save_atomic(obj: Dict[str, Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
