"""The artifact's files and their integrity: names, the JSON document, the tensors, the hashes that tie them.

- ``model.safetensors``: the learned tensors (``<module>.<key>``) and the
  evaluated text features (:data:`TEXT_FEATURES`); its header metadata holds
  the SHA-256 of ``ampt_model.json`` as written (:func:`metadata_digest`);
- ``ampt_model.json``: what the model is (docs/export.md), with the digest
  of the tensors (:func:`tensors_digest`) and of the backbone's weights
  (:func:`state_digest`).

Editing either file after the export, or a truncated one, is refused in one line when it is read.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

import torch
from torch import nn

from ..errors import UserError, UserFileNotFoundError

FORMAT = "ampt-model"
FORMAT_VERSION = 1
METADATA_FILE = "ampt_model.json"
TENSORS_FILE = "model.safetensors"
CARD_FILE = "README.md"
ONNX_FILE = "model.onnx"
TEXT_FEATURES = "text_features"
HEADER_KEY = "ampt_model_json_sha256"


class ArtifactError(UserError):
    """An artifact file that is missing, truncated, tampered with or of another format (one line)."""


def is_artifact(path: Path) -> bool:
    """True for a folder holding ``ampt_model.json`` (an exported model, not a run folder)."""
    return Path(path).is_dir() and (Path(path) / METADATA_FILE).is_file()


def canonical_json(document: Mapping[str, Any]) -> str:
    """The text of ``ampt_model.json``: sorted keys, indented, one trailing newline."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def metadata_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in name order (independent of the file layout)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def state_digest(model: nn.Module) -> str:
    """SHA-256 of a backbone's weights: :func:`tensors_digest` of its state dict (fp32, whatever file it came from)."""
    return tensors_digest(model.state_dict())


def artifact_paths(folder: Path) -> Tuple[Path, Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserFileNotFoundError(f"{folder} is not a folder: pass the folder written by python -m ampt.export")
    paths = folder / METADATA_FILE, folder / TENSORS_FILE
    for path in paths:
        if not path.is_file():
            raise UserFileNotFoundError(f"{path} is missing: {folder} is not a whole exported model "
                                        "(python -m ampt.export RUN OUT_DIR writes it)")
    return paths


def read_artifact(folder: Path) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """``(document, tensors)`` of an exported folder, both checked against each other; one line if anything is off."""
    json_path, tensors_path = artifact_paths(folder)
    text = json_path.read_text(encoding="utf-8", errors="replace")
    try:
        document = json.loads(text)
    except ValueError as err:
        raise ArtifactError(f"{json_path} is not valid JSON ({err}): the file is truncated or was edited; "
                            "export the run again") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ArtifactError(f'{json_path} is not an exported ampt model (no "format": "{FORMAT}")')
    if document.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{json_path} has format version {document.get('format_version')!r}; this ampt reads "
                            f"version {FORMAT_VERSION}: upgrade ampt or export the run again")
    header, tensors = _read_tensors(tensors_path)
    if header.get(HEADER_KEY) != metadata_digest(text):
        raise ArtifactError(f"{json_path} does not match {tensors_path.name} (its SHA-256 is not the one recorded "
                            "at export): it was edited or replaced after the export; export the run again")
    recorded = (document.get("files") or {}).get(TENSORS_FILE, {}).get("tensors_sha256")
    if recorded != tensors_digest(tensors):
        raise ArtifactError(f"{tensors_path} holds other tensors than the ones exported (SHA-256 mismatch): it was "
                            "changed after the export; export the run again")
    return document, tensors


def _read_tensors(path: Path) -> Tuple[Dict[str, str], Dict[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        reason = " ".join(str(err).split())[:200]
        raise ArtifactError(f"{path} cannot be read as safetensors ({reason}): the file is truncated or damaged; "
                            "export the run again") from None
    return header, tensors
