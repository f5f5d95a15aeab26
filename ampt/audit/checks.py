"""The audit's checks: each reads an :class:`AuditContext` and returns a :class:`CheckResult`.

The context attacks each image at most once per attack and caches which
images every attack left correctly classified, so the checks share their
attacks: PGD-100 is run once, the strong PGD only on the images PGD-100
left, Square only on those every white-box attack left. Accuracies are in
percent of all audited images, an image counting as robust only when it is
classified correctly clean and after every attack considered (the worst case
over the attacks, as AutoAttack counts).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import build_attack
from ..attacks.base import attack_mode
from ..models.parts import declared_parts, part_kinds, straight_through

PASS, FLAG, SKIP = "pass", "flag", "skip"
CHECKS = ("determinism", "gradient_health", "convergence", "black_box", "large_eps", "transfer", "declared_parts")


@dataclass
class AuditSettings:
    """What the audit runs; eps values in 1/255 units, tolerances in accuracy points (percent of images)."""

    eps: float
    seed: int = 0
    batch_size: int = 100
    pgd_steps: int = 100
    strong_steps: int = 500
    strong_restarts: int = 5
    square_queries: int = 5000
    large_eps: float = 64.0
    eot_iter: int = 20
    tolerance: float = 1.0  # a stronger attack lowering accuracy by more than this is a flag
    large_eps_max: float = 2.0  # robust accuracy at large_eps above this is a flag
    zero_grad_max: float = 5.0  # percent of images with a zero input gradient above this is a flag
    determinism_atol: float = 1e-5  # relative to the largest |logit|
    checks: tuple = CHECKS


@dataclass
class CheckResult:
    name: str
    status: str
    numbers: Dict[str, Any] = field(default_factory=dict)
    why: str = ""

    def as_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "status": self.status, "numbers": self.numbers, "why": self.why}


def pct(mask: Tensor) -> float:
    return round(100.0 * float(mask.float().mean()), 2) if mask.numel() else 0.0


class AuditContext:
    """The audited model and images, and the attacks' results shared by the checks."""

    def __init__(self, model: nn.Module, images: Tensor, labels: Tensor, num_classes: int,
                 settings: AuditSettings, source: Optional[nn.Module] = None) -> None:
        self.model = model.eval()
        self.images, self.labels = images, labels
        self.num_classes = num_classes
        self.settings = settings
        self.source = source
        self.parts = declared_parts(model)
        self.kinds = part_kinds(model)
        self._robust: Dict[str, Tensor] = {}
        self.seconds: Dict[str, float] = {}

    # ------------------------------------------------------------ forward passes
    @torch.no_grad()
    def logits(self, images: Tensor, model: Optional[nn.Module] = None) -> Tensor:
        model = model or self.model
        size = self.settings.batch_size
        return torch.cat([model(images[i:i + size]).float() for i in range(0, images.shape[0], size)])

    def correct(self, images: Tensor, index: Tensor) -> Tensor:
        return self.logits(images).argmax(dim=1) == self.labels[index]

    @property
    def clean(self) -> Tensor:
        if "clean" not in self._robust:
            self._robust["clean"] = self.logits(self.images).argmax(dim=1) == self.labels
        return self._robust["clean"]

    # ------------------------------------------------------------ attacks
    def robust_after(self, name: str, make: Callable[[nn.Module], Any], among: Optional[Tensor] = None,
                     model: Optional[nn.Module] = None) -> Tensor:
        """Which images stay correct after the attack ``make(model)``, run only on ``among`` (default: clean-correct).

        ``model`` (default: the audited one) is the model the attack is made on; it is always evaluated on the
        audited model (a transfer attack when they differ). Cached by ``name``.
        """
        if name in self._robust:
            return self._robust[name]
        import time

        start = time.perf_counter()
        among = self.clean if among is None else among
        robust = among.clone()
        index = among.nonzero().squeeze(1)
        if index.numel():
            attack = make(model or self.model)
            size = self.settings.batch_size
            for i in range(0, index.numel(), size):
                chunk = index[i:i + size]
                adv = attack(self.images[chunk], self.labels[chunk])
                robust[chunk] = self.correct(adv, chunk)
        self._robust[name] = robust
        self.seconds[name] = round(time.perf_counter() - start, 2)
        return robust

    def pgd(self, steps: Optional[int] = None, eps: Optional[float] = None, **kwargs: Any) -> Callable[[nn.Module], Any]:
        s = self.settings
        eps = s.eps if eps is None else eps
        return lambda model: build_attack("pgd", model, eps, steps=s.pgd_steps if steps is None else steps,
                                          seed=s.seed, **kwargs)

    @property
    def bpda(self) -> bool:
        """The audit's gradient attacks go through declared non-differentiable parts by their declared backward."""
        return "non_differentiable" in self.kinds

    @property
    def adaptive(self) -> Dict[str, Any]:
        """BPDA and EOT settings of the audit's PGD for this model's declared parts."""
        return {"bpda": self.bpda, "eot_iter": self.settings.eot_iter if "random" in self.kinds else 1}

    @property
    def pgd100(self) -> Tensor:
        """PGD through the declared parts (BPDA, EOT): the audit's reference white-box attack."""
        return self.robust_after("pgd", self.pgd(**self.adaptive))

    @property
    def plain_pgd(self) -> Tensor:
        """PGD taking the model at face value (no BPDA, no EOT): what an evaluation without them reports."""
        if not (self.adaptive["bpda"] or self.adaptive["eot_iter"] > 1):
            return self.pgd100
        return self.robust_after("plain_pgd", self.pgd())

    @property
    def strong(self) -> Tensor:
        """PGD with more steps and restarts (BPDA when declared; no EOT: its cost), on what PGD-100 left."""
        s = self.settings
        return self.robust_after("strong_pgd", self.pgd(s.strong_steps, restarts=s.strong_restarts, bpda=self.bpda),
                                 among=self.pgd100)

    @property
    def white_box(self) -> Tensor:
        """The worst case over every white-box attack the audit ran."""
        return self.pgd100 & self.strong


# ---------------------------------------------------------------- the checks
def determinism(ctx: AuditContext) -> CheckResult:
    first, second = ctx.logits(ctx.images), ctx.logits(ctx.images)
    scale = float(first.abs().max()) if first.numel() else 1.0
    diff = float((first - second).abs().max()) if first.numel() else 0.0
    changed = int((first.argmax(1) != second.argmax(1)).sum())
    numbers = {"max_abs_logit_diff": diff, "predictions_changed": changed}
    if diff <= ctx.settings.determinism_atol * max(scale, 1.0):
        return CheckResult("determinism", PASS, numbers, "two forward passes of the same images give the same logits")
    declared = "random" in ctx.kinds
    return CheckResult("determinism", FLAG, numbers,
                       f"the logits change between two passes (max |diff| {diff:.3g}, {changed} predictions changed): "
                       "the model is random; attack with EOT (aa-rand, --eot-iter N)"
                       + ("" if declared else " and declare the random part (ampt.models.parts.RandomPart)"))


def gradient_health(ctx: AuditContext) -> CheckResult:
    zero, nonfinite, norms = [], [], []
    size = ctx.settings.batch_size
    with attack_mode(ctx.model), straight_through(ctx.model, ctx.bpda):
        for i in range(0, ctx.images.shape[0], size):
            x = ctx.images[i:i + size].clone().requires_grad_(True)
            loss = F.cross_entropy(ctx.model(x).float(), ctx.labels[i:i + size], reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
            flat = grad.flatten(1)
            finite = torch.isfinite(flat).all(dim=1)
            nonfinite.append(~finite)
            zero.append(finite & (flat.abs().amax(dim=1) == 0))
            norms.append(flat.norm(dim=1)[finite])
    zero_m, nonfinite_m = torch.cat(zero), torch.cat(nonfinite)
    norm = torch.cat(norms)
    numbers = {"zero_gradient_pct": pct(zero_m), "nonfinite_gradient_pct": pct(nonfinite_m),
               "median_gradient_norm": float(norm.median()) if norm.numel() else 0.0}
    if numbers["nonfinite_gradient_pct"] > 0 or numbers["zero_gradient_pct"] > ctx.settings.zero_grad_max:
        return CheckResult("gradient_health", FLAG, numbers,
                           f"{numbers['zero_gradient_pct']:g}% of the images have a zero input gradient and "
                           f"{numbers['nonfinite_gradient_pct']:g}% a NaN/Inf one (quantization, masking or a saturated "
                           "softmax): gradient attacks see nothing there; use BPDA through the part, or Square")
    through = " (through the declared non-differentiable parts by BPDA)" if ctx.bpda else ""
    return CheckResult("gradient_health", PASS, numbers, f"input gradients{through} are finite and non-zero")


def convergence(ctx: AuditContext) -> CheckResult:
    s = ctx.settings
    base, strong = pct(ctx.pgd100), pct(ctx.pgd100 & ctx.strong)
    numbers = {f"pgd{s.pgd_steps}_acc": base, f"pgd{s.strong_steps}x{s.strong_restarts}_acc": strong,
               "drop": round(base - strong, 2)}
    if base - strong > s.tolerance:
        return CheckResult("convergence", FLAG, numbers,
                           f"PGD-{s.strong_steps} with {s.strong_restarts} restarts lowers PGD-{s.pgd_steps}'s "
                           f"{base:g}% to {strong:g}%: the {s.pgd_steps}-step attack has not converged")
    return CheckResult("convergence", PASS, numbers,
                       f"PGD-{s.strong_steps} x{s.strong_restarts} is within {s.tolerance:g} point of PGD-{s.pgd_steps}")


def black_box(ctx: AuditContext) -> CheckResult:
    s = ctx.settings
    white = ctx.white_box
    after = ctx.robust_after("square", lambda model: build_attack(
        "square", model, s.eps, steps=s.square_queries, num_classes=ctx.num_classes, seed=s.seed), among=white)
    numbers = {"white_box_acc": pct(white), "after_square_acc": pct(after), "square_queries": s.square_queries,
               "square_extra_broken": int((white & ~after).sum())}
    if pct(white) - pct(after) > s.tolerance:
        return CheckResult("black_box", FLAG, numbers,
                           f"Square ({s.square_queries} queries, no gradients) breaks {numbers['square_extra_broken']} "
                           "images every white-box attack left: the gradients are masked or obfuscated")
    return CheckResult("black_box", PASS, numbers, "Square finds nothing the white-box attacks missed")


def large_eps(ctx: AuditContext) -> CheckResult:
    s = ctx.settings
    robust = ctx.robust_after("large_eps", ctx.pgd(eps=s.large_eps, bpda=ctx.bpda))
    numbers = {"eps": s.large_eps, "acc": pct(robust)}
    if pct(robust) > s.large_eps_max:
        return CheckResult("large_eps", FLAG, numbers,
                           f"{pct(robust):g}% of the images survive PGD-{s.pgd_steps} at eps {s.large_eps:g}/255, "
                           "where the images themselves can be replaced: the attack does not reach the model")
    return CheckResult("large_eps", PASS, numbers, f"robust accuracy at eps {s.large_eps:g}/255 is near 0")


def transfer(ctx: AuditContext) -> CheckResult:
    if ctx.source is None:
        return CheckResult("transfer", SKIP, {}, "no source model to transfer attacks from")
    white = ctx.white_box
    transferred = ctx.robust_after("transfer", ctx.pgd(), model=ctx.source)
    numbers = {"white_box_acc": pct(white), "transfer_acc": pct(transferred)}
    if pct(transferred) < pct(white) - ctx.settings.tolerance:
        return CheckResult("transfer", FLAG, numbers,
                           f"PGD made on the source model leaves {pct(transferred):g}%, below the white-box "
                           f"{pct(white):g}%: the model's own gradients mislead the attack")
    return CheckResult("transfer", PASS, numbers, "attacks transferred from the source model are weaker than white-box")


def declared_parts_check(ctx: AuditContext) -> CheckResult:
    parts = ctx.parts
    if not parts:
        return CheckResult("declared_parts", SKIP, {"parts": 0},
                           "the model declares no router, non-differentiable, random or test-time part")
    adaptive = ctx.adaptive
    numbers: Dict[str, Any] = {"parts": len(parts)}
    notes: List[str] = []
    flagged = False
    if adaptive["bpda"] or adaptive["eot_iter"] > 1:
        through = " and ".join(n for n, on in (("BPDA", adaptive["bpda"]), (f"EOT-{adaptive['eot_iter']}",
                                                                             adaptive["eot_iter"] > 1)) if on)
        plain, adapted = pct(ctx.plain_pgd), pct(ctx.pgd100)
        numbers.update({"plain_pgd_acc": plain, "adaptive_pgd_acc": adapted})
        notes.append(f"the audit attacked through them ({through}): PGD {adapted:g}% vs {plain:g}% at face value"
                     + ("; numbers without " + through + " overstate robustness"
                        if plain - adapted > ctx.settings.tolerance else ""))
    for part in parts:
        if part["kind"] == "router":
            notes.append(f"{part['path']}: router, attacked through by autograd")
        elif part["kind"] == "test_time":
            flagged = True
            notes.append(f"{part['path']}: optimises at test time; the audit's attacks do not go through the loop")
    return CheckResult("declared_parts", FLAG if flagged else PASS, numbers, "; ".join(notes))


CHECK_FUNCTIONS = {"determinism": determinism, "gradient_health": gradient_health, "convergence": convergence,
                   "black_box": black_box, "large_eps": large_eps, "transfer": transfer,
                   "declared_parts": declared_parts_check}
