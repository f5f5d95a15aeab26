"""Grid x methods -> cells, each validated by building its config as ``train.py`` does."""
from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional

from .layout import default_alpha, epochs_for
from .runspec import RunSpec, is_adversarial, trainer_class
from .spec import Cell, Method, Sweep, SweepError, dataset_config_file

DEMO_BACKBONE = "backbone/tiny_clip_digits_tecoa.pt"  # under output_root, written by prepare: digits-demo


def backbone_of(sweep: Sweep, method: Method) -> Optional[str]:
    """The method's backbone, else the sweep's, else the one ``prepare`` writes."""
    if method.backbone or sweep.backbone:
        return str(method.backbone or sweep.backbone)
    if sweep.prepare == "digits-demo":
        return str(Path(sweep.output_root) / DEMO_BACKBONE)
    return None


def _epochs(sweep: Sweep, method: Method, dataset: str, shots: Optional[int]) -> Optional[int]:
    rule = method.epochs if method.epochs is not None else sweep.epochs
    if rule is None:
        return None
    if rule == "by_shots":
        if shots is None:
            raise SweepError(f"{sweep.path}: method {method.label}: epochs: by_shots needs a 'shots' grid axis")
        return epochs_for(dataset, int(shots))
    return int(rule)


def _last_wins(pairs: List[str]) -> List[str]:
    merged: Dict[str, str] = {}
    for key, value in zip(pairs[0::2], pairs[1::2]):
        merged.pop(key, None)
        merged[key] = value
    return [x for pair in merged.items() for x in pair]


def _opts(sweep: Sweep, method: Method, point: Dict[str, Any]) -> List[str]:
    dataset, shots = str(point["dataset"]), point.get("shots")
    pairs: List[str] = []
    backbone = backbone_of(sweep, method)
    if backbone:
        pairs += ["MODEL.BACKBONE.NAME", backbone]
    pairs += sweep.opts + method.opts
    epochs = _epochs(sweep, method, dataset, shots)
    if epochs is not None:
        pairs += ["OPTIM.MAX_EPOCH", str(epochs)]
    pairs += [x for key, value in point.items() if "." in key for x in (key, str(value))]
    if shots is not None:
        pairs += ["DATASET.NUM_SHOTS", str(shots)]
    return _last_wins(pairs)


def _validated(sweep: Sweep, method: Method, spec: RunSpec) -> RunSpec:
    """Build the config (errors name the method); make APT's default alpha explicit, as the scripts do."""
    try:
        trainer_class(method.trainer)
        cfg = spec.config_node()
    except KeyError as err:  # ConfigKeyError and the registry's "Unknown trainer"
        raise SweepError(f"{sweep.path}: method {method.label}: {err.args[0] if err.args else err}") from None
    except (ValueError, FileNotFoundError) as err:
        raise SweepError(f"{sweep.path}: method {method.label}: {err}") from None
    if is_adversarial(method.trainer) and float(cfg.ADV.TRAIN.ALPHA) == -1:
        spec = replace(spec, opts=spec.opts + ("ADV.TRAIN.ALPHA", f"{default_alpha(cfg.ADV.TRAIN.EPS):g}"))
    return spec


def make_cell(sweep: Sweep, method: Method, point: Dict[str, Any]) -> Cell:
    if "dataset" not in point:
        raise SweepError(f"{sweep.path}: method {method.label}: the grid needs a 'dataset' axis")
    dataset = str(point["dataset"])
    spec = RunSpec(trainer=method.trainer, dataset_config=dataset_config_file(sweep, dataset),
                   config=method.config, seed=int(point.get("seed", 1)),
                   opts=tuple(_opts(sweep, method, point)), data_root=sweep.data_root)
    spec = _validated(sweep, method, spec)
    return Cell(method=method.label, dataset=dataset, point=dict(point), spec=spec,
                run_dir=str(spec.run_dir(sweep.output_root)), evaluate=[dict(e) for e in sweep.evaluate])


def expand(sweep: Sweep) -> List[Cell]:
    """Every (method, grid point) cell; a method's own ``grid`` replaces the sweep's axes it names."""
    if not sweep.methods:
        raise SweepError(f"{sweep.path}: 'methods' is empty")
    cells: List[Cell] = []
    for method in sweep.methods.values():
        grid = {**sweep.grid, **method.grid}
        axes = list(grid)
        for values in itertools.product(*(grid[a] for a in axes)):
            cells.append(make_cell(sweep, method, dict(zip(axes, values))))
    if not cells:
        raise SweepError(f"{sweep.path}: 0 cells: the grid has no points (an axis with an empty list of values)")
    seen: Dict[str, Cell] = {}
    for cell in cells:
        if cell.run_dir in seen:
            raise SweepError(f"{sweep.path}: cells '{seen[cell.run_dir].name}' and '{cell.name}' are the same run "
                             f"({cell.run_dir}); make their settings differ")
        seen[cell.run_dir] = cell
    return cells
