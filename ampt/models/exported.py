"""What a trained model hands to an exported artifact, and how the model is rebuilt from it without a trainer.

A prompt model declares :meth:`~ampt.models.interface.PromptModel.exportable_state`:
an :class:`ExportState` naming its class (:func:`exportable_models`), the
settings its ``from_exported`` classmethod needs besides the backbone and the
class names (JSON values), and its learned tensors by state-dict name.
``python -m ampt.export`` writes them to ``model.safetensors`` and
``ampt_model.json``; :func:`ampt.load_classifier` calls
:func:`rebuild_model`. Nothing here imports a trainer or the config system.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..errors import UserError

# How the evaluated module wraps the model (evaluate.py's ``prompt_model``): the text features fixed, and
# for AdvVP with TRAINER.ADVVP.EVAL_FRAME False the frame only under a gradient (FrameUnderAttackOnly).
WRAPPERS = ("fixed_text_features", "frame_under_attack_only")


class ExportRefused(UserError):
    """A model (or a request) that cannot be exported in the asked form; the message says why, in one line."""


@dataclass
class ExportState:
    """A model's exportable state.

    ``learned_modules``: the model's learned sub-modules in the order the
    trainer registered them (their tensors are ``tensors``, named
    ``<module>.<state-dict key>``). ``class_specific``: prompts learned per
    class, so no new class names. ``graph_note``: "" when the test-time
    graph is the backbone's image tower plus a head on fixed text features
    (exported to ONNX), else why it is not exported.
    """

    model: str
    settings: Dict[str, Any]
    learned_modules: List[str]
    tensors: Dict[str, torch.Tensor]
    class_specific: bool = False
    graph_note: str = ""
    wrapper: str = WRAPPERS[0]
    text_features: Optional[torch.Tensor] = field(default=None, repr=False)


def learned_tensors(model: nn.Module, names: Sequence[str]) -> Dict[str, torch.Tensor]:
    """``{"<module>.<key>": tensor}`` of the persistent state of ``model.<module>`` for each name, detached, on CPU."""
    return {f"{name}.{key}": value.detach().cpu().contiguous()
            for name in names for key, value in getattr(model, name).state_dict().items()}


def load_learned_tensors(model: nn.Module, names: Sequence[str], tensors: Dict[str, torch.Tensor]) -> None:
    """Load ``tensors`` into the learned modules ``names`` of ``model``, strictly (every key, every shape)."""
    for name in names:
        module = getattr(model, name)
        prefix = f"{name}."
        own = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
        expected = module.state_dict()
        missing = sorted(set(expected) - set(own))
        unexpected = sorted(set(own) - set(expected))
        wrong = sorted(k for k in set(own) & set(expected) if tuple(own[k].shape) != tuple(expected[k].shape))
        if missing or unexpected or wrong:
            raise UserError(
                f"The exported tensors of {name} do not fit {type(model).__name__}: missing {missing or 'none'}, "
                f"unexpected {unexpected or 'none'}, other shape {wrong or 'none'}; export the run again")
        module.load_state_dict(own)


def exportable_models() -> Dict[str, type]:
    """The model classes an artifact may name, by name (each has ``exportable_state`` and ``from_exported``)."""
    from .deep_prompt_models import DeepPromptCLIP, VisualPromptCLIP
    from .mixture import MixturePromptedCLIP
    from .moe_prompts import MoEDeepPromptCLIP
    from .perturb_shield import DefeatCLIP
    from .prompted_clip import FixedPromptCLIP, PromptedCLIP

    classes = (PromptedCLIP, FixedPromptCLIP, MixturePromptedCLIP, DeepPromptCLIP, VisualPromptCLIP, DefeatCLIP,
               MoEDeepPromptCLIP)
    return {cls.__name__: cls for cls in classes}


def check_rebuildable(model: nn.Module) -> None:
    """Refuse a model whose class :func:`exportable_models` does not name (a plug-in's subclass inherits
    ``exportable_state`` but could not be rebuilt as itself)."""
    cls = type(model)
    if exportable_models().get(cls.__name__) is not cls:
        raise ExportRefused(
            f"{cls.__module__}.{cls.__name__} cannot be exported: ampt.load_classifier rebuilds only the toolkit's "
            f"model classes ({', '.join(sorted(exportable_models()))}), and this one adds to "
            f"{cls.__mro__[1].__name__} what its exported state would not hold")


def rebuild_model(clip_model: nn.Module, classnames: Sequence[str], model: str, settings: Dict[str, Any],
                  tensors: Dict[str, torch.Tensor]) -> nn.Module:
    """The prompt model ``model`` on ``clip_model`` for ``classnames``, its learned tensors loaded, in eval mode.

    The global random state is left as it was (the modules' initialisation draws are overwritten anyway).
    """
    classes = exportable_models()
    if model not in classes:
        raise UserError(f'ampt_model.json names the model "{model}", which this version of ampt cannot rebuild; '
                        f'known: {", ".join(sorted(classes))}. Upgrade ampt or export the run again')
    with torch.random.fork_rng(devices=[]):
        rebuilt = classes[model].from_exported(clip_model, list(classnames), settings, tensors)
    return rebuilt.eval()
