"""CW-loss PGD: the L-inf margin attack of adversarial prompt tuning papers."""
from __future__ import annotations

from typing import Any, Dict, Optional

from torch import Tensor, nn

from .pgd import IterativeAttack


class CW(IterativeAttack):
    """PGD on the margin loss of Carlini & Wagner, "Towards Evaluating the
    Robustness of Neural Networks" (S&P 2017), as used in L-inf robustness
    evaluations (TRADES, APT-style papers). Threat model: white-box,
    untargeted, L-inf ball of radius ``eps``/255 in pixel space.

    Maximises ``max_{j != y} z_j - z_y`` (logits, no confidence clamp) with
    :func:`~ampt.attacks.pgd.pgd_linf`: uniform random start, ``steps``
    sign-gradient steps of size ``alpha``/255 (default eps / 4), projection
    each step. This is **not** the L2 Carlini-Wagner optimisation
    (``torchattacks.CW``), which is unbounded and minimises the perturbation.
    """

    def __init__(self, model: nn.Module, eps: float, alpha: Optional[float] = None,
                 steps: int = 100, seed: int = 0, random_start: bool = True, **kwargs: Any) -> None:
        super().__init__(model, eps, alpha, steps, seed, **kwargs)
        self.random_start = bool(random_start)

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        return self._run(images, labels, loss="cw", random_start=self.random_start)

    def hparams(self) -> Dict[str, Any]:
        return {**super().hparams(), "loss": "margin", "random_start": self.random_start}
