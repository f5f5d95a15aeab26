"""Evaluations with a test-time method (``evaluate.py --test-time NAME``): which model attacks, which predicts.

- ``non-adaptive`` (the published protocol of test-time defenses): the
  attack computes its images on the run's model without adaptation; the
  test-time loop then adapts on them and predicts.
- ``adaptive``: the attacked model is the whole adapt-then-predict loop
  (:class:`~ampt.tta.TestTimeAdapted`), its steps unrolled, its random views
  declared (EOT with ``--eot-iter``), its rounding declared (BPDA with
  ``--bpda``).

Every record names the method, all its settings and the threat model (all
in the record key), and the loop's cost per image against a plain forward.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..errors import UserError
from ..models.interface import LEARNED
from ..tta import TTA_REGISTRY, TestTimeAdapted, TestTimeContext, settings_text


@dataclass
class TestTimeEvaluation:
    """The loops of an evaluation's test-time methods, each prepared once, and what their records say."""

    loops: Dict[str, TestTimeAdapted]
    seed: int
    prepared: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    plain_seconds_per_image: float = 0.0

    @classmethod
    def start(cls, trainer: Any, plan: Any, run_dir: Path, weights: str, base: nn.Module,
              loader: DataLoader) -> "TestTimeEvaluation":
        """Each method prepared on the run (TAPT: reference statistics), its loop built, a plain forward timed."""
        tt = plan.test_time
        if plan.precision != "fp32":
            raise UserError(f"--test-time runs in fp32 (got --precision {plan.precision}): drop --precision")
        if plan.prompt != LEARNED:
            raise UserError(f"--test-time tunes the run's learned prompts; --prompt {plan.prompt} has none to tune")
        model = trainer.model.to(trainer.device).eval()
        device = trainer.device

        def train_batches():
            for batch in trainer.train_loader_x:
                yield batch["img"].to(device)

        loops, prepared = {}, {}
        for name in tt.methods:
            method = TTA_REGISTRY.get(name)(tt.settings[name])
            prepared[name] = method.prepare(model, TestTimeContext(run_dir, weights, device, train_batches))
            loops[name] = TestTimeAdapted(model, method, seed=plan.seed)
        evaluation = cls(loops, plan.seed, prepared)
        evaluation.plain_seconds_per_image = _plain_seconds_per_image(base, loader, device)
        return evaluation

    def model(self, method: str) -> TestTimeAdapted:
        """The method's loop, its draws restarted from the seed and its clock reset."""
        loop = self.loops[method]
        loop.generator.manual_seed(int(self.seed))
        loop.seconds, loop.images = 0.0, 0
        return loop

    def record_fields(self, method: str, threat: str) -> Dict[str, Any]:
        loop = self.loops[method]
        per_image = loop.seconds / max(loop.images, 1)
        fields: Dict[str, Any] = {
            "test_time": method, "test_time_options": settings_text(loop.method.settings),
            "test_time_threat": threat, "test_time_settings": dict(loop.method.settings),
            "test_time_paper": loop.method.paper,
            "test_time_cost": {"seconds_per_image": round(per_image, 5),
                               "plain_forward_seconds_per_image": round(self.plain_seconds_per_image, 6),
                               "forward_multiple": round(per_image / max(self.plain_seconds_per_image, 1e-9), 1),
                               "images": loop.images},
            **{f"test_time_{k}": v for k, v in self.prepared[method].items()},
        }
        if threat == "non-adaptive":
            fields["attacked_model"] = "the run's model without test-time adaptation"
        return fields


@torch.no_grad()
def _plain_seconds_per_image(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    images = next(iter(loader))["img"].to(device)
    model(images)  # warm-up
    start = time.perf_counter()
    model(images)
    return (time.perf_counter() - start) / images.shape[0]
