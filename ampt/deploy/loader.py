"""``load_classifier(path)``: an exported folder -> :class:`~ampt.deploy.classifier.Classifier`.

The artifact's two files are checked against each other
(:func:`~ampt.deploy.artifact_format.read_artifact`), the backbone is loaded
by the toolkit's own loader (``weights_only`` for files, the ``clip``
package's or open_clip's for names and hub ids) and its weights' SHA-256
compared with the one recorded at export. Nothing is unpickled beyond
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from ..models.clip_loader import load_clip
from ..models.exported import rebuild_model
from .artifact_format import TEXT_FEATURES, ArtifactError, read_artifact, state_digest
from .classifier import Classifier

logger = logging.getLogger(__name__)


def load_classifier(path: Union[str, Path], device: Union[str, torch.device] = "cpu", backbone: Optional[str] = None,
                    robust_weights: Optional[str] = None, download_root: str = "") -> Classifier:
    """The exported model in ``path`` as an ``nn.Module`` (images in [0, 1] -> logits), in eval mode on ``device``.

    ``backbone`` / ``robust_weights`` replace the recorded backbone name or
    file and robust visual weights file (e.g. where they sit on another
    machine); their weights must still have the recorded SHA-256.
    """
    folder = Path(path)
    document, tensors = read_artifact(folder)
    text_features = tensors.pop(TEXT_FEATURES, None)
    if text_features is None:
        raise ArtifactError(f"{folder}/model.safetensors has no {TEXT_FEATURES} tensor: export the run again")
    clip_model = _load_backbone(document["backbone"], folder, backbone, robust_weights, download_root)
    method = document["method"]
    model = rebuild_model(clip_model, document["classes"], method["model"], method["settings"], tensors)
    classifier = Classifier(model, text_features, clip_model, document, tensors)
    return classifier.to(device).eval()


def _load_backbone(info: Dict[str, Any], folder: Path, name: Optional[str], robust_weights: Optional[str],
                   download_root: str) -> nn.Module:
    name = name or info["name"]
    robust = info.get("robust_weights") or "" if robust_weights is None else robust_weights
    if robust and not Path(robust).is_file():
        raise ArtifactError(f"{folder} was trained with the robust visual weights {robust}, which are not there: "
                            "pass robust_weights=PATH (their SHA-256 is checked)")
    clip_model = load_clip(name, robust, download_root, pretrained=info.get("pretrained") or "")
    digest = state_digest(clip_model)
    if digest != info["state_sha256"]:
        raise ArtifactError(
            f"The backbone {name}{' + ' + robust if robust else ''} has other weights than the ones {folder} was "
            f"exported with (SHA-256 {digest[:16]}..., recorded {info['state_sha256'][:16]}...): load the recorded "
            f"backbone ({info['name']}) or pass backbone=PATH to its weights")
    return clip_model.float().eval()
