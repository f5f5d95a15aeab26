"""Suite-wide settings and shared fixtures."""
import pytest
import torch

from ampt.models.tiny import build_tiny_clip

torch.set_num_threads(1)  # tiny tensors: more threads only add overhead


@pytest.fixture(scope="module")
def tiny():
    """A frozen tiny CLIP (the ``clip`` package's model class), one per test module."""
    model = build_tiny_clip(seed=0)
    for p in model.parameters():
        p.requires_grad_(False)
    return model
