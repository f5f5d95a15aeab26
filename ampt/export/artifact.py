"""Write a trained run as an exported folder (docs/export.md): tensors, description, model card, optional ONNX.

The run is rebuilt as ``evaluate.py`` rebuilds it (:func:`~ampt.evaluation.run_loader.load_run`)
and the module ``evaluate.py`` attacks for its learned prompt declares its
state (:meth:`~ampt.models.interface.PromptModel.exportable_state`). The
folder is written beside ``OUT_DIR`` and renamed into place once whole; an
existing export is replaced only with ``force``, and so is a run that has
not finished exported (its latest checkpoint, which the card names).
"""
from __future__ import annotations

import datetime
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from .. import __version__
from ..deploy.artifact_format import (CARD_FILE, FORMAT, FORMAT_VERSION, HEADER_KEY, METADATA_FILE, ONNX_FILE,
                                      TENSORS_FILE, TEXT_FEATURES, canonical_json, is_artifact, metadata_digest,
                                      state_digest, tensors_digest)
from ..engine.checkpoint import weights_digest
from ..errors import UserError, UserFileNotFoundError
from ..evaluation.evaluated_prompt import prompt_model
from ..evaluation.run_loader import LoadedRun, load_run
from ..models.backbone import BackboneInfo, backbone_info, pretrained_setting
from ..models.clip_loader import load_clip
from ..models.exported import ExportRefused, ExportState
from ..models.interface import LEARNED
from ..utils.io import file_mode
from ..results import RunResults, backup_stamp
from .card import render_card
from .summary import records_summary, training_attack

logger = logging.getLogger(__name__)

OPENAI_LICENSE = "mit"  # github.com/openai/CLIP: code and released weights under the MIT license


def export_run(run_dir: Path, out_dir: Path, force: bool = False, onnx: bool = False,
               load_epoch: Optional[int] = None, license_id: str = "", loaded: Optional[LoadedRun] = None) -> Path:
    """Export ``run_dir`` into ``out_dir``; returns ``out_dir``.

    ``loaded``: the run as :func:`~ampt.evaluation.run_loader.load_run` already rebuilt it (not rebuilt again).
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    _check_paths(run_dir, out_dir, force)
    results = RunResults(run_dir)
    if not results.finished and not force:
        raise UserError(f"{run_dir} has not finished training (its results.json does not say finished): its latest "
                        "checkpoint is not the model the run deploys. Finish the run, or pass --force to export the "
                        "latest checkpoint (the model card names its epoch)")
    run = loaded or load_run(run_dir, load_epoch=load_epoch)
    trainer = run.trainer
    state = _exportable_state(prompt_model(trainer, LEARNED))
    if onnx and state.graph_note:
        raise ExportRefused(f"--onnx: {type(trainer).__name__}'s test-time graph is not exported to ONNX: "
                            f"{state.graph_note}. Export without --onnx")
    tensors = {**state.tensors, TEXT_FEATURES: state.text_features.detach().cpu().contiguous()}
    document = _document(run, results, state, tensors, license_id)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.", dir=out_dir.parent) as tmp:
        staging = Path(tmp) / out_dir.name
        staging.mkdir()
        if onnx:
            from .onnx_export import export_onnx

            document["onnx"] = export_onnx(prompt_model(trainer, LEARNED), staging / ONNX_FILE,
                                           int(document["preprocess"]["size"]), routed=_routed(trainer.model))
        _write(staging, document, tensors)
        _move_into_place(staging, out_dir)
    logger.info("Exported %s to %s", run_dir, out_dir)
    return out_dir


def _check_paths(run_dir: Path, out_dir: Path, force: bool) -> None:
    if is_artifact(run_dir):
        raise UserError(f"{run_dir} is already an exported model; RUN must be a run folder written by train.py")
    if not (run_dir / "config.yaml").is_file():
        what = "does not exist" if not run_dir.exists() else "has no config.yaml"
        raise UserFileNotFoundError(f"{run_dir} {what}: RUN must be a run folder written by train.py")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"OUT_DIR {out_dir} is a file: choose a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        what = "an exported model" if is_artifact(out_dir) else "other files"
        raise UserError(f"OUT_DIR {out_dir} already holds {what}; it is not overwritten: choose another folder or "
                        "pass --force to replace it")
    if out_dir.resolve() == run_dir.resolve() or run_dir.resolve() in out_dir.resolve().parents:
        raise UserError(f"OUT_DIR {out_dir} is inside the run folder {run_dir}: choose a folder outside it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)


def _exportable_state(evaluated: torch.nn.Module) -> ExportState:
    declared = getattr(evaluated, "exportable_state", None)
    if declared is None:
        raise ExportRefused(f"The module evaluate.py attacks for this run ({type(evaluated).__name__}) declares no "
                            "exportable state: its trainer's eval_prompt_model returns a module that cannot be exported")
    state = declared()
    if state.text_features is None:
        raise ExportRefused(f"{type(evaluated).__name__} gave no text features with its exportable state")
    return state


def _routed(model: torch.nn.Module) -> bool:
    return "router_weights" in model.model_features()


def _document(run: Any, results: RunResults, state: ExportState, tensors: Dict[str, torch.Tensor],
              license_id: str) -> Dict[str, Any]:
    trainer, cfg = run.trainer, run.trainer.cfg
    run_info = results.run
    weights = weights_digest(trainer)
    loaded = getattr(trainer, "loaded_checkpoint", None) or {}
    epoch = loaded.get("checkpoint_epoch", run.epoch)
    node = trainer.trainer_cfg()
    backbone, info = _backbone(cfg, license_id)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "classes": list(trainer.classnames),
        "method": {
            "trainer": type(trainer).__name__, "model": state.model, "settings": state.settings,
            "learned_modules": state.learned_modules, "class_specific": state.class_specific,
            "wrapper": state.wrapper, "onnx_refused_because": state.graph_note,
            "prompt_label": trainer.model.prompt_label(), "n_prompts": int(trainer.model.n_prompts),
            "model_features": sorted(trainer.model.model_features()),
            "trainer_settings": _plain(node) if node is not None else {},
        },
        "backbone": backbone,
        "preprocess": _preprocess(cfg, info),
        "training": {
            "dataset": run.train_dataset, "subsample_classes": cfg.DATASET.SUBSAMPLE_CLASSES,
            "shots": int(cfg.DATASET.NUM_SHOTS), "seed": int(cfg.SEED), "adversarial": bool(run.adversarial),
            "train_eps": float(cfg.ADV.TRAIN.EPS) if run.adversarial else 0.0,
            "attack": training_attack(run_info) if run.adversarial else {},
            "finished": bool(results.finished), "checkpoint_epoch": epoch, "max_epoch": int(cfg.OPTIM.MAX_EPOCH),
            "weights": weights, "engine": run_info.get("engine", "builtin"), "dataset_config": _plain(cfg.DATASET),
            "test_loader": {"batch_size": int(cfg.DATALOADER.TEST.BATCH_SIZE),
                            "num_workers": int(cfg.DATALOADER.NUM_WORKERS)},
        },
        "results": records_summary(results.run_dir, weights),
        "files": {TENSORS_FILE: {"tensors_sha256": tensors_digest(tensors),
                                 "tensors": {k: list(v.shape) for k, v in sorted(tensors.items())}}},
        "exported": {"ampt_version": __version__, "torch": torch.__version__, "source_run": str(results.run_dir),
                     "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
    }


def _backbone(cfg: Any, license_id: str) -> Tuple[Dict[str, Any], BackboneInfo]:
    """What the backbone is and the SHA-256 of its weights (loaded again, as the loader will), and its description."""
    node = cfg.MODEL.BACKBONE
    pretrained = pretrained_setting(node)
    clip_model = load_clip(node.NAME, node.ROBUST_WEIGHTS, node.DOWNLOAD_ROOT, pretrained=pretrained)
    info = backbone_info(clip_model)
    robust = str(node.ROBUST_WEIGHTS or "")
    licence, source = _license(info.kind, node.NAME, pretrained, license_id)
    return {"kind": info.kind, "name": node.NAME, "pretrained": pretrained, "robust_weights": robust,
            "robust_weights_file_sha256": _file_sha256(Path(robust)) if robust else None,
            "state_sha256": state_digest(clip_model), "input_resolution": info.input_resolution,
            "license": licence, "license_source": source}, info


def _license(kind: str, name: str, pretrained: str, given: str) -> tuple:
    if given:
        return given, "given at export (--license)"
    import clip

    if kind == "clip" and name in clip.available_models():
        return OPENAI_LICENSE, "OpenAI CLIP (github.com/openai/CLIP, MIT)"
    return "other", "not recorded: check the license of the backbone weights before publishing (--license sets it)"


def _preprocess(cfg: Any, info: BackboneInfo) -> Dict[str, Any]:
    return {"size": int(cfg.INPUT.SIZE[0]), "interpolation": str(cfg.INPUT.INTERPOLATION),
            "resize": "shorter side to size, then centre crop size x size",
            "mean": [float(v) for v in info.mean], "std": [float(v) for v in info.std],
            "input": "RGB pixels in [0, 1]; the model normalizes with mean/std itself"}


def _plain(node: Any) -> Any:
    """A yacs node as JSON values."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node


def _file_sha256(path: Path) -> Optional[str]:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write(folder: Path, document: Dict[str, Any], tensors: Dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    text = canonical_json(document)
    (folder / METADATA_FILE).write_text(text, encoding="utf-8")
    save_file(tensors, str(folder / TENSORS_FILE), metadata={"format": FORMAT, HEADER_KEY: metadata_digest(text)})
    os.chmod(folder / TENSORS_FILE, file_mode())  # safetensors writes 0o600; the folder's other files follow the umask
    (folder / CARD_FILE).write_text(render_card(document), encoding="utf-8")


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Rename the whole staging folder to ``out_dir``; a previous one is moved aside first and removed after."""
    previous = None
    if out_dir.exists():
        previous = out_dir.with_name(f".{out_dir.name}.replaced-{backup_stamp()}")
        out_dir.rename(previous)
    staging.rename(out_dir)
    if previous is not None:
        shutil.rmtree(previous)
