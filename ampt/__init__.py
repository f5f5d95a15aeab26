"""AMPT toolkit: adversarial prompt tuning for CLIP on a Dassl-compatible engine.

The core package holds everything trainers share (engine, data, optim, CLIP
models, attacks). Trainers and datasets are plug-in files in the repository's
``trainers/`` and ``datasets/`` folders, loaded by :mod:`ampt.plugins`.
"""

__version__ = "0.1.0"
