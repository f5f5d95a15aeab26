"""AdamW from a fresh state, written out so that its steps can be unrolled (differentiated through).

Equal to ``torch.optim.AdamW`` (decoupled weight decay applied first, then
the bias-corrected Adam step) for the same hyper-parameters; the state
starts at zero for every image, as a test-time method that resets its
optimizer does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

import torch
from torch import Tensor


@dataclass
class AdamW:
    lr: float
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    step_count: int = 0
    m: List[Tensor] = field(default_factory=list)
    v: List[Tensor] = field(default_factory=list)

    def step(self, params: Dict[str, Tensor], grads: List[Tensor]) -> Dict[str, Tensor]:
        """New parameters (the old ones are not modified); differentiable when ``grads`` carry a graph."""
        b1, b2 = self.betas
        self.step_count += 1
        t = self.step_count
        if not self.m:
            self.m = [torch.zeros_like(g) for g in grads]
            self.v = [torch.zeros_like(g) for g in grads]
        out = {}
        for index, ((name, p), g) in enumerate(zip(params.items(), grads)):
            self.m[index] = b1 * self.m[index] + (1 - b1) * g
            self.v[index] = b2 * self.v[index] + (1 - b2) * g * g
            m_hat = self.m[index] / (1 - b1 ** t)
            denom = (self.v[index] / (1 - b2 ** t)).sqrt() + self.eps
            out[name] = p * (1 - self.lr * self.weight_decay) - self.lr * m_hat / denom
        return out
