"""The "method setting" of a run: its trainer plus the settings that tell its runs apart.

Rule (documented in the README, section Report):

1. ``run.method`` in ``results.json`` (the sweep runner writes its method
   name there) is the label as it is.
2. Otherwise the label is the trainer name, followed by every config key
   whose value differs between two runs of that trainer in the same cell
   (dataset, shots, train eps, trained classes), as ``KEY=value`` with the
   key's last component (the full key when two would read the same), e.g.
   ``AMPT N_PROMPTS=8``. Keys that only change with the cell (epochs by
   shots, the attack step size by eps) do not split a method; the seed,
   paths and the output folder never do.
3. Runs read from CoOp's or APT's own logs get `` (CoOp log)`` /
   `` (APT log)`` appended, and their settings come from the folder path.
4. An eval-only run of loaded weights (``train.py --eval-only --model-dir``,
   :func:`ampt.report.collect.eval_only_label`) takes the label of the run it
   loaded (when that run is in the report; else rule 1 or 2 among the eval-only
   runs) with `` (eval-only, epoch E)`` appended: its own row, never another
   run's seed. Eval-only runs never change the other runs' labels.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, Iterable, List, Sequence, Set, Tuple

from .collect import Run, loaded_from

NOT_SETTINGS = ("TRAINER.NAME",)


def cell_of(run: Run) -> Tuple[str, int, float, str]:
    return run.dataset, run.shots, run.train_eps, run.subsample


def distinguishing_keys(runs: Sequence[Run]) -> List[str]:
    """Keys whose values differ between two of ``runs`` (one trainer) that share a cell."""
    by_cell: Dict[Tuple, List[Run]] = defaultdict(list)
    for run in runs:
        by_cell[cell_of(run)].append(run)
    keys: Set[str] = set()
    for members in by_cell.values():
        for key in set().union(*(r.settings for r in members)):
            if key in NOT_SETTINGS:
                continue
            values = {repr(r.settings[key]) for r in members if key in r.settings}
            if len(values) > 1:
                keys.add(key)
    return sorted(keys)


def short_names(keys: Sequence[str]) -> Dict[str, str]:
    """Each key by its last component, or in full where two keys would read the same."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def _label_by_settings(runs: Iterable[Run]) -> None:
    """Rules 2 and 3 for every run without a label (in place)."""
    groups: Dict[Tuple[str, str], List[Run]] = defaultdict(list)
    for run in runs:
        if not run.method:
            groups[(run.trainer, run.source)].append(run)
    for (trainer, source), members in groups.items():
        keys = distinguishing_keys(members)
        names = short_names(keys)
        for run in members:
            parts = [f"{names[k]}={_format(run.settings[k])}" for k in keys if k in run.settings]
            label = " ".join([trainer, *parts])
            run.method = f"{label} ({source})" if source else label


def _label_eval_only(runs: Sequence[Run], trained: Sequence[Run]) -> None:
    """Rule 4: the loaded run's label (else rules 1-3 among ``runs``) plus `` (eval-only, epoch E)``."""
    by_path = {run.path.resolve(): run for run in trained}
    for run in runs:
        source = by_path.get(loaded_from(run))
        if not run.method and source is not None:
            run.method = source.method
    _label_by_settings(runs)
    for run in runs:
        suffix = f" ({run.eval_only})"
        if not run.method.endswith(suffix):
            run.method += suffix


def assign_methods(runs: Iterable[Run]) -> List[Run]:
    """Set ``run.method`` on every run without an explicit label (in place); returns the runs."""
    runs = list(runs)
    trained = [run for run in runs if not run.eval_only]
    _label_by_settings(trained)
    _label_eval_only([run for run in runs if run.eval_only], trained)
    return runs
