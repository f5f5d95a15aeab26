"""Today's objectives are registered terms with bit-identical results.

The losses of three training steps and every learned tensor after them, for
CoOp, APT (ce, perturbed ce, trades, fap), FAP, AdvVP and AMPT (plain and
with its clean-CE, TRADES-KL and balance terms), equal with ``torch.equal``
what the same runs gave on the commit before the objectives package existed
(``tests/golden/objectives_f3a3ee3.pt``, written by ``tests/golden/objective_runs.py``).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from golden.objective_runs import RUNS, record_run
from test_apt import _quiet, toy_env  # noqa: F401  (fixtures)

GOLDEN = Path(__file__).resolve().parent / "golden" / "objectives_f3a3ee3.pt"


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_training_steps_equal_the_recorded_ones_bit_for_bit(golden, toy_env, tmp_path, name):
    tensors = record_run(toy_env, tmp_path / name, *RUNS[name])
    expected = {key.split("/", 1)[1]: value for key, value in golden.items() if key.startswith(f"{name}/")}
    assert sorted(tensors) == sorted(expected)
    assert tensors["losses"].tolist() == expected["losses"].tolist()
    for key, value in expected.items():
        assert torch.equal(tensors[key], value), f"{name}: {key} differs by {(tensors[key] - value).abs().max()}"
