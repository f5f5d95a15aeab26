"""A trained run as a deployable artifact: its format, its integrity checks and the classifier loaded from it.

Only ``torch``, ``safetensors`` and ``clip``/open_clip (through
:mod:`ampt.models`) are imported here: no trainer, config system or plug-in.
``python -m ampt.export`` writes the artifact (docs/export.md).
"""
from .loader import load_classifier

__all__ = ["load_classifier"]
