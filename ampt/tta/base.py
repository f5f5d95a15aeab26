"""The test-time method interface and its registry (``evaluate.py --test-time NAME``).

A test-time method adapts a copy of a run's learned prompts to each test
image and predicts with the adapted copy (:class:`~ampt.tta.adapted.TestTimeAdapted`
runs the loop: views, a few optimizer steps, the prediction, the reset). A
method is one file in ``ampt/tta/`` (or a plug-in folder's ``tta/``)::

    @register_test_time
    class MyMethod(TestTimeMethod):
        name = "my_method"
        paper = "Author et al., Venue Year"
        defaults = {"views": 64, "steps": 1, "lr": 5e-4}

        def loss(self, view_logits, view_stats):   # the adaptation objective on the views
            ...

Its settings are ``key=value`` pairs (``--test-time-options views=32,lr=1e-3``)
over ``defaults``; every record names the method and all its settings.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Optional

import torch
from torch import Tensor

from ..errors import UserError
from ..registry import Registry

TTA_REGISTRY = Registry("test-time method")
THREATS = ("non-adaptive", "adaptive")

# The loop's own settings, shared by every method (a method's ``defaults`` gives their values).
LOOP_KEYS = ("views", "steps", "lr", "weight_decay", "crop_scale_min", "quantize")


@dataclass
class TestTimeContext:
    """What a method's :meth:`~TestTimeMethod.prepare` may use: the run's folder, weights digest, device and
    its training images (``train_batches()`` yields ``[B, 3, H, W]`` pixel batches in [0, 1])."""

    __test__ = False  # not a pytest class

    run_dir: Path
    weights: str
    device: torch.device
    train_batches: Callable[[], Iterator[Tensor]]


class TestTimeMethod:
    """One registered test-time adaptation method; see the module docstring."""

    __test__ = False  # not a pytest class

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    defaults: ClassVar[Dict[str, Any]] = {}

    def __init__(self, settings: Dict[str, Any]) -> None:
        self.settings = settings
        self.token_layers: Optional[range] = None  # image blocks whose inputs loss() reads (set by prepare)

    def prepare(self, model: torch.nn.Module, context: TestTimeContext) -> Dict[str, Any]:
        """Work done once per evaluation (TAPT: reference statistics); returns what the record should say."""
        return {}

    def loss(self, view_logits: Tensor, view_tokens: List[Tensor]) -> Tensor:
        """The adaptation objective on the ``[V, C]`` logits of the views (and, for the blocks of
        ``token_layers``, their input tokens ``[V, L, D]``)."""
        raise NotImplementedError

    def predict(self, params: Dict[str, Tensor], batch: Any) -> Tensor:
        """``[1, C]`` logits with the adapted ``params`` (default: of the image alone, as TAPT).

        ``batch`` (:class:`~ampt.tta.adapted.ViewBatch`) gives ``logits(params, "image" | "views")`` and
        ``view_features()``.
        """
        return batch.logits(params, "image")


def register_test_time(cls: type) -> type:
    if not cls.name:
        raise TypeError(f"{cls.__name__} sets no name")
    missing = [k for k in LOOP_KEYS if k not in cls.defaults]
    if missing:
        raise TypeError(f"{cls.__name__}.defaults lacks the loop keys {', '.join(missing)}")
    return TTA_REGISTRY.register(cls, name=cls.name)


def _coerce(key: str, text: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        return type(default)(float(text)) if isinstance(default, int) else type(default)(text)
    except ValueError:
        raise UserError(f'--test-time-options: {key}="{text}" is not a {type(default).__name__}') from None


def parse_settings(method: str, options: str) -> Dict[str, Any]:
    """The method's defaults updated by ``"key=value,key=value"``; an unknown key lists the valid ones."""
    cls = TTA_REGISTRY.get(method)
    settings = dict(cls.defaults)
    for item in filter(None, (part.strip() for part in (options or "").split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in settings:
            raise UserError(f'--test-time-options: "{item}" is not key=value with a key of {method} '
                            f'(valid: {", ".join(sorted(settings))})')
        settings[key] = _coerce(key, value.strip(), settings[key])
    if int(settings["views"]) < 1 or int(settings["steps"]) < 0 or float(settings["lr"]) < 0:
        raise UserError(f"--test-time-options: views >= 1, steps >= 0 and lr >= 0 (got {settings})")
    return settings


def settings_text(settings: Dict[str, Any]) -> str:
    """``"align=0.5,lr=0.0005,..."``: the settings in a record key (sorted, numbers as %g)."""
    def fmt(value: Any) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else str(value)
    return ",".join(f"{k}={fmt(v)}" for k, v in sorted(settings.items()))
