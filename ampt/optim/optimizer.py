"""``build_optimizer`` with Dassl's names and ``cfg.OPTIM`` keys.

RAdam is PyTorch's own ``torch.optim.RAdam`` (Dassl ships a copy of the
original implementation; the update rule is the same).
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Iterable, List, Optional, Union

import torch
import torch.nn as nn

from ..registry import unknown_name_message
from ..errors import UserError

logger = logging.getLogger(__name__)

AVAI_OPTIMS = ["adam", "amsgrad", "sgd", "rmsprop", "radam", "adamw"]

ParamsLike = Union[nn.Module, Iterable[Any]]


def _staged_param_groups(model: nn.Module, optim_cfg: Any) -> List[dict]:
    """Dassl's STAGED_LR: children named in NEW_LAYERS train at LR, the rest at LR * BASE_LR_MULT."""
    if not isinstance(model, nn.Module):
        raise TypeError("OPTIM.STAGED_LR True needs an nn.Module, not an iterable of parameters")
    if isinstance(model, nn.DataParallel):
        model = model.module
    new_layers = optim_cfg.NEW_LAYERS
    if isinstance(new_layers, str):
        new_layers = [new_layers]
    if not new_layers:
        warnings.warn("OPTIM.NEW_LAYERS is empty: STAGED_LR puts every layer at the base LR")
    base_params, new_params = [], []
    for name, module in model.named_children():
        target = new_params if name in new_layers else base_params
        target.extend(module.parameters())
    return [
        {"params": base_params, "lr": optim_cfg.LR * optim_cfg.BASE_LR_MULT},
        {"params": new_params},
    ]


def build_optimizer(
    model_or_params: ParamsLike, optim_cfg: Any, param_groups: Optional[List[dict]] = None
) -> torch.optim.Optimizer:
    """Build the optimizer named by ``optim_cfg.NAME`` (one of :data:`AVAI_OPTIMS`).

    ``model_or_params`` is a module (all its parameters) or an iterable of
    parameters; ``param_groups``, when given, is optimized instead of both.
    """
    name = optim_cfg.NAME
    if name not in AVAI_OPTIMS:
        raise UserError(unknown_name_message("optimizer (OPTIM.NAME)", name, AVAI_OPTIMS))
    if param_groups is not None and optim_cfg.STAGED_LR:
        warnings.warn("OPTIM.STAGED_LR is ignored when param_groups are given; set their lr yourself")
    if param_groups is None:
        if optim_cfg.STAGED_LR:
            param_groups = _staged_param_groups(model_or_params, optim_cfg)  # type: ignore[arg-type]
        elif isinstance(model_or_params, nn.Module):
            param_groups = list(model_or_params.parameters())
        else:
            param_groups = list(model_or_params)
    if not param_groups:
        raise ValueError("build_optimizer got no parameters to optimize (is everything frozen?)")

    lr, wd = optim_cfg.LR, optim_cfg.WEIGHT_DECAY
    betas = (optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2)
    if name in ("adam", "amsgrad"):
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=wd, betas=betas, amsgrad=name == "amsgrad")
    if name == "sgd":
        return torch.optim.SGD(
            param_groups,
            lr=lr,
            momentum=optim_cfg.MOMENTUM,
            weight_decay=wd,
            dampening=optim_cfg.SGD_DAMPNING,
            nesterov=optim_cfg.SGD_NESTEROV,
        )
    if name == "rmsprop":
        return torch.optim.RMSprop(
            param_groups, lr=lr, momentum=optim_cfg.MOMENTUM, weight_decay=wd, alpha=optim_cfg.RMSPROP_ALPHA
        )
    if name == "radam":
        return torch.optim.RAdam(param_groups, lr=lr, weight_decay=wd, betas=betas)
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=wd, betas=betas)
