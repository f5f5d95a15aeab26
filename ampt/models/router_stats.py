"""Statistics of AMPT's router weights and prompt bank: is the router routing?

All functions take router weights ``[N, K]`` (rows on the simplex) or the
bank's normalized text features ``[K, C, D]`` and return plain numbers
(entropies and mutual information in nats):

- :func:`weight_entropy` per image (``log K`` = uniform, 0 = one-hot);
- :func:`entropy_of_mean`: entropy of the batch-mean weights (low = every image
  uses the same prompt: a collapsed router);
- :func:`tv_from_mean`: mean total-variation distance between an image's
  weights and the batch mean (0 = the weights do not depend on the image;
  at most ``1 - 1/K``);
- :func:`bank_cosine`: ``[K, K]`` cosine of prompt k's and prompt l's text
  features, averaged over classes (off-diagonal near 1 = the K prompts say
  the same thing);
- :func:`routing_mutual_information`: ``I(prompt; group)`` of the soft
  assignment ``p(k, g) = (1/N) sum_{i in g} w_k(x_i)``; the group is the class
  label, or clean-vs-attacked. 0 when the weights do not depend on the group;
  at most ``min(log K, log G)``.

:class:`EpochAccumulator` sums these over an epoch's batches.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .router import weight_entropy

__all__ = ["weight_entropy", "entropy_of_mean", "tv_from_mean", "bank_cosine", "mean_offdiagonal",
           "routing_mutual_information", "EpochAccumulator", "TestWeightLog", "eval_split_stats", "bank_summary"]


def entropy_of_mean(weights: torch.Tensor) -> float:
    """Entropy (nats) of the mean weight vector of ``weights [N, K]``."""
    return float(weight_entropy(weights.float().mean(dim=0, keepdim=True))[0])


def tv_per_image(weights: torch.Tensor) -> torch.Tensor:
    """``[N]`` total-variation distance of each row of ``weights`` to their mean."""
    weights = weights.float()
    return 0.5 * (weights - weights.mean(dim=0, keepdim=True)).abs().sum(dim=1)


def tv_from_mean(weights: torch.Tensor) -> float:
    """Mean total-variation distance between each image's weights and the batch mean."""
    return float(tv_per_image(weights).mean())


def bank_cosine(text_features: torch.Tensor) -> torch.Tensor:
    """``[K, K]`` cosine similarity of the prompts' normalized features ``[K, C, D]``, mean over classes."""
    t = text_features.float()
    t = t / t.norm(dim=-1, keepdim=True)
    return torch.einsum("kcd,lcd->kl", t, t) / t.shape[1]


def mean_offdiagonal(matrix: torch.Tensor) -> float:
    """Mean of the off-diagonal entries of a square matrix (NaN for 1 x 1)."""
    k = matrix.shape[0]
    if k < 2:
        return float("nan")
    mask = ~torch.eye(k, dtype=torch.bool, device=matrix.device)
    return float(matrix[mask].mean())


def routing_mutual_information(weights: torch.Tensor, groups: torch.Tensor) -> float:
    """``I(prompt; group)`` in nats of the soft assignment ``p(k | x_i) = w_k(x_i)`` (see the module doc)."""
    weights = weights.float()
    groups = groups.long().to(weights.device)
    if weights.shape[0] != groups.shape[0]:
        raise ValueError(f"{weights.shape[0]} weight rows but {groups.shape[0]} group labels")
    n = weights.shape[0]
    _, index = groups.unique(return_inverse=True)
    joint = torch.zeros(int(index.max()) + 1, weights.shape[1], dtype=weights.dtype, device=weights.device)
    joint.index_add_(0, index, weights)
    joint = joint / n  # p(g, k)
    p_group = joint.sum(dim=1, keepdim=True)
    p_prompt = joint.sum(dim=0, keepdim=True)
    ratio = joint / (p_group * p_prompt).clamp_min(1e-30)
    terms = torch.where(joint > 0, joint * ratio.clamp_min(1e-30).log(), torch.zeros_like(joint))
    return max(0.0, float(terms.sum()))


class EpochAccumulator:
    """Per-epoch sums of the router's weights, their spread and the gradient norms."""

    def __init__(self, n_prompts: int) -> None:
        self.n_prompts = n_prompts
        self.n_images = 0
        self.weight_sum = torch.zeros(n_prompts, dtype=torch.float64)
        self.entropy_sum = 0.0
        self.tv_sum = 0.0
        self.logit_std_sum = 0.0
        self.grad_sums: Dict[str, float] = {}
        self.n_steps = 0

    def add_weights(self, weights: torch.Tensor) -> None:
        """One batch of weights ``[B, K]`` (TV is measured against this batch's mean)."""
        w = weights.detach().float().cpu()
        self.n_images += w.shape[0]
        self.weight_sum += w.sum(dim=0).double()
        self.entropy_sum += float(weight_entropy(w).sum())
        self.tv_sum += float(tv_per_image(w).sum())
        # softmax logits are log-weights up to a per-row constant: their spread across K
        self.logit_std_sum += float(w.clamp_min(1e-12).log().std(dim=1, unbiased=False).sum())

    def add_grad_norms(self, norms: Dict[str, float]) -> None:
        """One optimisation step's gradient L2 norms, by parameter group name."""
        self.n_steps += 1
        for name, value in norms.items():
            self.grad_sums[name] = self.grad_sums.get(name, 0.0) + float(value)

    def summary(self) -> Optional[Dict[str, object]]:
        """Epoch means (None before any batch)."""
        if not self.n_images:
            return None
        mean = self.weight_sum / self.n_images
        out: Dict[str, object] = {
            "mean_weights": [round(float(w), 5) for w in mean],
            "entropy": round(self.entropy_sum / self.n_images, 5),
            "entropy_of_mean": round(float(weight_entropy(mean.float()[None])[0]), 5),
            "max_entropy": round(math.log(self.n_prompts), 5),
            "tv_from_batch_mean": round(self.tv_sum / self.n_images, 5),
            "router_logit_std": round(self.logit_std_sum / self.n_images, 6),
            "n_images": self.n_images,
        }
        if self.n_steps:
            out["grad_norm"] = {k: float(f"{v / self.n_steps:.4g}") for k, v in self.grad_sums.items()}
        return out


class TestWeightLog:
    """The router's weights on every test batch, clean and attacked: an :data:`ampt.evaluation.robust_accuracy.BatchObserver`.

    ``read_weights`` returns the weights of the model's last forward.
    """

    def __init__(self, read_weights: Callable[[], torch.Tensor]) -> None:
        self.read_weights = read_weights
        self.weights: Dict[str, List[torch.Tensor]] = {"clean": [], "attacked": []}
        self.labels: List[torch.Tensor] = []

    def __call__(self, kind: str, labels: torch.Tensor) -> None:
        self.weights[kind].append(self.read_weights().detach().float().cpu())
        if kind == "clean":
            self.labels.append(labels.detach().cpu())

    def tensors(self) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """Clean weights ``[N, K]``, attacked weights (None without an attack) and labels ``[N]``."""
        attacked = torch.cat(self.weights["attacked"]) if self.weights["attacked"] else None
        return torch.cat(self.weights["clean"]), attacked, torch.cat(self.labels)


def eval_split_stats(clean: torch.Tensor, attacked: Optional[torch.Tensor], labels: torch.Tensor) -> Dict[str, object]:
    """Test-set statistics from the weights on clean (and attacked) images ``[N, K]`` and labels ``[N]``."""
    out: Dict[str, object] = {
        "n_images": int(clean.shape[0]),
        "clean": _split_summary(clean, labels),
    }
    if attacked is not None:
        out["attacked"] = _split_summary(attacked, labels)
        both = torch.cat([clean, attacked])
        source = torch.cat([torch.zeros(len(clean)), torch.ones(len(attacked))]).long()
        out["mi_clean_vs_attacked"] = round(routing_mutual_information(both, source), 6)
        out["tv_clean_to_attacked"] = round(float(0.5 * (clean - attacked).abs().sum(dim=1).mean()), 5)
    return out


def _split_summary(weights: torch.Tensor, labels: torch.Tensor) -> Dict[str, object]:
    return {
        "mean_weights": [round(float(w), 5) for w in weights.float().mean(dim=0)],
        "entropy": round(float(weight_entropy(weights.float()).mean()), 5),
        "entropy_of_mean": round(entropy_of_mean(weights), 5),
        "tv_from_mean": round(tv_from_mean(weights), 5),
        "mi_label": round(routing_mutual_information(weights, labels), 6),
    }


def bank_summary(text_features: torch.Tensor) -> Dict[str, List]:
    """``bank_cosine`` (mean off-diagonal) and the full ``[K, K]`` matrix, rounded for JSON."""
    matrix = bank_cosine(text_features)
    return {"bank_cosine": round(mean_offdiagonal(matrix), 5) if matrix.shape[0] > 1 else None,
            "bank_cosine_matrix": [[round(float(v), 4) for v in row] for row in matrix]}


ROUTER_STATS_FILE = "router_stats.json"


def update_router_stats_file(output_dir: str, epoch: Optional[Dict] = None, **sections: object) -> None:
    """Update ``output_dir/router_stats.json``: ``epochs`` (one entry each, replaced on resume) and other sections.

    Written by rank 0 only under torchrun (its share of the images).
    """
    from ..utils import distributed
    from ..utils.io import read_json, write_json

    if not distributed.is_main():
        return
    path = f"{output_dir}/{ROUTER_STATS_FILE}"
    try:
        data = read_json(path)
    except FileNotFoundError:
        data = {"epochs": []}
    if epoch is not None:
        data["epochs"] = [h for h in data["epochs"] if h["epoch"] < epoch["epoch"]] + [epoch]
    data.update(sections)
    write_json(data, path)
