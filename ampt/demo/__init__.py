"""The embedded default: Digits data, a tiny CLIP pretrained on it, and the demo table.

- :func:`prepare_digits` writes scikit-learn's digits in CoOp's layout.
- :func:`pretrain_tiny_clip` pretrains (or reuses) the tiny CLIP backbone.
- :func:`run_demo` (``python -m ampt.demo``) runs the methods through ``train.py``.
"""
from .digits_data import CLASSNAMES, prepare_digits
from .pretrain import PretrainSettings, pretrain_tiny_clip
from .run import run_demo

__all__ = ["CLASSNAMES", "PretrainSettings", "prepare_digits", "pretrain_tiny_clip", "run_demo"]
