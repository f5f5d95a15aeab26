"""AMPT toolkit: adversarial prompt tuning for CLIP on a Dassl-compatible engine.

The core package holds everything trainers share (engine, data, optim, CLIP
models, attacks). Trainers and datasets are plug-in files in the repository's
``trainers/`` and ``datasets/`` folders, loaded by :mod:`ampt.plugins`.
``ampt.load_classifier(folder)`` loads a model exported by ``python -m ampt.export``.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``ampt.load_classifier``: imported on first use, so ``import ampt`` stays light."""
    if name == "load_classifier":
        from .deploy import load_classifier

        return load_classifier
    raise AttributeError(f"module 'ampt' has no attribute {name!r}")
