"""Suite-wide settings and shared fixtures.

The fixtures that several test modules use live here or in the helper modules
imported below (``toys.py``: the toy data sets, tiny CLIPs and the quiet-logging
fixture; ``engine_toys.py``: the built-in engine's linear toy trainer); a test
module asks for them by name and imports no fixture from another test module.
Each builds its data once per session.
"""
import pytest
import torch

from ampt.models.tiny import build_tiny_clip
from engine_toys import data_root  # noqa: F401  (fixture; test_coop overrides it with its own)
from toys import _quiet, colour_digits_env, demo_shape_env, digits_root, toy_env, toy_root  # noqa: F401  (fixtures)

torch.set_num_threads(1)  # tiny tensors: more threads only add overhead


def _frozen_tiny_clip(**shape):
    model = build_tiny_clip(seed=0, **shape)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def tiny():
    """A frozen tiny CLIP (the ``clip`` package's model class), one per test module."""
    return _frozen_tiny_clip()


@pytest.fixture(scope="module")
def tiny_demo_shape():
    """A frozen tiny CLIP of the demo's shape: text 64 wide x 2 blocks, vision 96 wide x 3 blocks (widths differ)."""
    return _frozen_tiny_clip(vision_width=96, vision_layers=3)
