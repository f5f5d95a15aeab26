"""``python -m ampt.export RUN OUT_DIR``: a trained run as a small, self-describing, pickle-free folder.

:func:`~ampt.export.artifact.export_run` writes ``model.safetensors``,
``ampt_model.json`` and a model card ``README.md`` (:mod:`ampt.export.card`),
and with ``--onnx`` a ``model.onnx`` checked against torch
(:mod:`ampt.export.onnx_export`). The format is in docs/export.md; the
reader is :func:`ampt.load_classifier`.
"""
from .artifact import export_run

__all__ = ["export_run"]
