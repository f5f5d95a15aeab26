"""Parts of a model that an attack cannot take at face value, declared by the model itself.

A model composes these modules where it has such a part; the core finds them
with :func:`declared_parts` (an ``isinstance`` walk over ``model.modules()``,
never an attribute guess) and every attack and the audit say how they went
through each one:

- ``router`` (:class:`RouterPart`): an input-dependent, differentiable
  mixture (AMPT's router). Autograd goes through it; records say
  ``adaptive: through-router``.
- ``non_differentiable`` (:class:`NonDifferentiable`): a quantizer, a mask, a
  rounding input transform. Its gradient is zero or undefined, so a gradient
  attack that stops there overstates robustness. With
  :func:`straight_through` on (``evaluate.py --bpda``) it keeps its forward
  value and takes the declared backward instead (BPDA: identity, or a
  differentiable surrogate).
- ``random`` (:class:`RandomPart`): an output that depends on random draws
  (a random input transform); attack it with EOT (``--eot-iter N`` or
  ``aa-rand``).
- ``test_time`` (:class:`TestTimePart`): optimisation at inference (test-time
  prompt tuning); the attack must go through the whole loop.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, List

from torch import Tensor, nn

PART_KINDS = ("router", "non_differentiable", "random", "test_time")


class DeclaredPart(nn.Module):
    """Base class of the declared parts; ``part_kind`` is one of :data:`PART_KINDS`.

    (``part_kind``, not ``kind``: a part such as AMPT's router has a ``kind`` of its own.)
    """

    part_kind: str = ""

    def describe(self) -> Dict[str, str]:
        """What a record and the audit say about this part."""
        return {"kind": self.part_kind, "module": type(self).__name__}


class RouterPart(DeclaredPart):
    """An input-dependent, differentiable weighting of the model's parts (attacked through by autograd)."""

    part_kind = "router"


class NonDifferentiable(DeclaredPart):
    """``fn`` applied to the input, with a declared backward for BPDA.

    ``backward`` is ``"identity"`` (straight-through: the gradient passes as if
    ``fn`` were the identity; needs ``fn(x)`` of ``x``'s shape) or a
    differentiable surrogate ``g`` (the gradient of ``g`` at ``x``). Outside
    :func:`straight_through` the gradient is ``fn``'s own (zero for rounding).
    ``forward_is_straight_through`` declares that ``fn`` already passes its
    gradient by the declared backward (``x + (q(x) - x).detach()``, DEFEAT's
    quantizer): an attack without BPDA then gets the same gradient, and
    evaluations do not warn about it.
    """

    part_kind = "non_differentiable"

    def __init__(self, fn: Callable[[Tensor], Tensor], backward: object = "identity", name: str = "",
                 forward_is_straight_through: bool = False) -> None:
        super().__init__()
        self.forward_is_straight_through = bool(forward_is_straight_through)
        if backward != "identity" and not callable(backward):
            raise ValueError(f'backward must be "identity" or a differentiable callable (got {backward!r})')
        self.fn = fn
        self.backward_rule = backward
        self.name = name or getattr(fn, "__name__", "fn")
        self.straight_through = False

    def forward(self, x: Tensor) -> Tensor:
        y = self.fn(x)
        if not self.straight_through:
            return y
        surrogate = x if self.backward_rule == "identity" else self.backward_rule(x)
        return surrogate + (y - surrogate).detach()

    def describe(self) -> Dict[str, str]:
        backward = "identity" if self.backward_rule == "identity" else getattr(self.backward_rule, "__name__", "surrogate")
        out = {**super().describe(), "name": self.name, "backward": backward}
        if self.forward_is_straight_through:
            out["forward_is_straight_through"] = True
        return out


class RandomPart(DeclaredPart):
    """``fn(x)``: an input transform that draws random numbers (a random crop, noise)."""

    part_kind = "random"

    def __init__(self, fn: Callable[[Tensor], Tensor], name: str = "") -> None:
        super().__init__()
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "fn")

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def describe(self) -> Dict[str, str]:
        return {**super().describe(), "name": self.name}


class TestTimePart(DeclaredPart):
    """A module that optimises something at inference; subclasses implement ``forward``."""

    part_kind = "test_time"


def declared_parts(model: nn.Module) -> List[Dict[str, str]]:
    """Every declared part of ``model``: ``[{"path", "kind", ...}]`` in module order."""
    return [{"path": path or type(model).__name__, **module.describe()}
            for path, module in model.named_modules() if isinstance(module, DeclaredPart)]


def part_kinds(model: nn.Module) -> List[str]:
    """The kinds of ``model``'s declared parts, each once, in :data:`PART_KINDS` order."""
    kinds = {module.part_kind for module in model.modules() if isinstance(module, DeclaredPart)}
    return [kind for kind in PART_KINDS if kind in kinds]


@contextlib.contextmanager
def straight_through(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """BPDA for the duration: every :class:`NonDifferentiable` part takes its declared backward."""
    parts = [m for m in model.modules() if isinstance(m, NonDifferentiable)]
    before = [p.straight_through for p in parts]
    try:
        for part in parts:
            part.straight_through = bool(enabled)
        yield
    finally:
        for part, flag in zip(parts, before):
            part.straight_through = flag


def adaptive_label(kinds: List[str], bpda: bool, eot_iter: int) -> str:
    """How an attack handled the declared parts: ``none``, ``through-adaptation`` (the attacked model runs its
    test-time loop inside the attack), ``through-router``, ``bpda``, ``eot`` (joined by ``+``)."""
    labels = []
    if "test_time" in kinds:
        labels.append("through-adaptation")
    if "router" in kinds:
        labels.append("through-router")
    if bpda and "non_differentiable" in kinds:
        labels.append("bpda")
    if eot_iter > 1:
        labels.append("eot")
    return "+".join(labels) or "none"
