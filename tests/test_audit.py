"""The audit (ampt.audit) on broken tiny models, each caught by the right check, and on honest runs.

The broken models are built from the tiny trained CLIP classifier of tests/tiny_classifier.py:
an 8-bit input quantizer (zero gradients), a random input transform (non-determinism), a softmax
saturated in fp16 by a huge logit scale (vanishing gradients) and a model whose robustness holds
only against white-box attacks (decoy gradients, which Square breaks). The audit settings are
small (40 images, PGD-20, PGD-40 x2, Square 300 queries) so that the file runs in seconds.
"""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from ampt.audit import AuditSettings, audit_table, run_audit
from ampt.models.parts import NonDifferentiable
from tiny_classifier import synthetic, trained_classifier

N_IMAGES = 40


def settings(**overrides) -> AuditSettings:
    values = dict(eps=4, batch_size=N_IMAGES, pgd_steps=20, strong_steps=40, strong_restarts=2, square_queries=300,
                  eot_iter=4)
    return AuditSettings(**{**values, **overrides})


@pytest.fixture(scope="module")
def honest():
    torch.set_num_threads(1)
    model = trained_classifier()
    images, labels = synthetic(N_IMAGES, seed=1)
    return model, images, labels


class Quantized(nn.Module):
    """8-bit input quantization in the forward: the rounding has a zero gradient everywhere."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: Tensor) -> Tensor:
        return self.base(torch.round(x * 255) / 255)


class DeclaredQuantized(nn.Module):
    """The same quantizer, declared as a non-differentiable part with an identity backward (BPDA)."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.quantizer = NonDifferentiable(lambda x: torch.round(x * 255) / 255, name="8-bit input")
        self.base = base

    def forward(self, x: Tensor) -> Tensor:
        return self.base(self.quantizer(x))


class RandomNoise(nn.Module):
    """Gaussian noise on the input at every forward, undeclared."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: Tensor) -> Tensor:
        return self.base((x + 0.02 * torch.randn_like(x)).clamp(0, 1))


class SaturatedHalf(nn.Module):
    """Logits 50 x larger, in fp16: the softmax of a correct image is exactly one-hot, its gradient zero."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: Tensor) -> Tensor:
        return (self.base(x) * 50).half()


class DecoyGradients(nn.Module):
    """The model's logits with the gradient of a fixed random linear map: white-box attacks follow the decoy."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.decoy = nn.Linear(3 * 32 * 32, 4)
        nn.init.normal_(self.decoy.weight, std=1.0, generator=torch.Generator().manual_seed(7))

    def forward(self, x: Tensor) -> Tensor:
        decoy = self.decoy(x.flatten(1))
        return self.base(x).detach() + decoy - decoy.detach()


def statuses(entry) -> dict:
    return {c["name"]: c["status"] for c in entry["checks"]}


def test_honest_model_passes_every_check(honest):
    model, images, labels = honest
    entry = run_audit(model, images, labels, 4, settings())
    assert statuses(entry) == {"determinism": "pass", "gradient_health": "pass", "convergence": "pass",
                               "black_box": "pass", "large_eps": "pass", "transfer": "skip",
                               "declared_parts": "skip"}, audit_table(entry)
    assert entry["status"] == "pass" and entry["flags"] == [] and entry["clean_acc"] > 90


@pytest.mark.parametrize("broken, check", [
    (Quantized, "gradient_health"),
    (RandomNoise, "determinism"),
    (SaturatedHalf, "gradient_health"),
    (DecoyGradients, "black_box"),
])
def test_each_broken_model_is_flagged_by_the_right_check(honest, broken, check):
    base, images, labels = honest
    model = broken(base)
    # Square is the decoy model's check; the others' flags do not depend on the strong attacks' length
    cheap = {} if check == "black_box" else dict(strong_steps=20, strong_restarts=1, square_queries=100)
    entry = run_audit(model, images, labels, 4, settings(**cheap), source=base)
    assert entry["status"] == "flag" and check in entry["flags"], audit_table(entry)
    flagged = next(c for c in entry["checks"] if c["name"] == check)
    if check == "gradient_health":
        assert flagged["numbers"]["zero_gradient_pct"] > 50
    if check == "determinism":
        assert flagged["numbers"]["max_abs_logit_diff"] > 0
    if check == "black_box":
        assert flagged["numbers"]["after_square_acc"] < flagged["numbers"]["white_box_acc"] - 10
        assert "transfer" in entry["flags"]  # PGD made on the base model breaks what the decoy hid


def test_a_declared_quantizer_is_attacked_through_by_bpda(honest):
    base, images, labels = honest
    entry = run_audit(DeclaredQuantized(base), images, labels, 4, settings())
    assert entry["status"] == "pass", audit_table(entry)
    parts = next(c for c in entry["checks"] if c["name"] == "declared_parts")
    assert parts["numbers"]["adaptive_pgd_acc"] < parts["numbers"]["plain_pgd_acc"] - 20
    assert "BPDA" in parts["why"] and "overstate" in parts["why"]
    assert entry["declared_parts"][0]["kind"] == "non_differentiable"


def test_ampts_router_is_a_declared_router_part():
    from ampt.models.parts import declared_parts, part_kinds
    from ampt.models.router import Router

    router = Router(8, 4, kind="mlp", hidden=4)
    assert part_kinds(router) == ["router"] and router.kind == "mlp"
    assert declared_parts(router) == [{"path": "Router", "kind": "router", "module": "Router"}]
