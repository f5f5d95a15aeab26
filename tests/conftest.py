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

# pytest-xdist (``--dist loadfile``) hands whole files to the workers in collection order. The files that
# start processes or train many runs go first, longest first, so that the two workers finish together
# instead of one waiting on a long file handed out last. Seconds each on the 2-core machine, 2026-12-05.
LONGEST_FIRST = (
    "test_sweep_runs.py",  # 55: the sweep runner beside the shell scripts, submitit
    "test_distributed.py",  # 45: torchrun
    "test_registry_all.py",  # 37: every trainer, every attack
    "test_audit.py",  # 27
    "test_attacks.py",  # 26
    "test_sweep.py",  # 21
    "test_evaluate.py",  # 16
    "test_export.py",  # 15
    "test_plugin_folders.py",  # 13: a pytest subprocess
    "test_open_clip.py",  # 13
    "test_demo.py",  # 12
    "test_objectives.py",  # 12
    "test_app_browser.py",  # 12: a browser and a web server
    "test_errors.py",  # 10
)


def pytest_configure(config):
    config.option.loadscopereorder = False  # keep LONGEST_FIRST (xdist would sort the files by test count)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: the rest keep their order


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
