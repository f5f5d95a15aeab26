"""Tables and plots from the ``results.json`` files under one or more folders.

``python -m ampt.report ROOT [ROOT...] [--format markdown|csv|latex|json] [--plots DIR] [--audit]
[--mix-protocols]``, or ``--format robustbench --out DIR`` (:mod:`~ampt.report.robustbench`);
from Python, :func:`build_report` (the sweep runner's ``report`` calls it)::

    from ampt.report import build_report
    print(build_report(["output/sweeps/digits-compare"], fmt="latex", plots_dir="figures"))

Modules: :mod:`~ampt.report.collect` (find and read runs),
:mod:`~ampt.report.migrate` (CoOp's and APT's own ``log.txt``),
:mod:`~ampt.report.methods` (method-setting labels),
:mod:`~ampt.report.aggregate` (mean and std over seeds, averages, harmonic mean),
:mod:`~ampt.report.router` (the router diagnostics table),
:mod:`~ampt.report.model` (the tables' content), :mod:`~ampt.report.tables`
(the formats), :mod:`~ampt.report.plots` (the figures), :mod:`~ampt.report.protocols`
(each run's protocol and the table it goes in), :mod:`~ampt.report.audit_table` (the audit's
flags and table), :mod:`~ampt.report.robustbench` (RobustBench model cards).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

from .collect import Run, collect_runs
from .methods import assign_methods
from .model import Report, make_report
from .tables import FORMATS, render
from ..errors import UserError

__all__ = ["FORMATS", "Report", "Run", "build_report", "collect_runs", "load_report", "render"]


def load_report(roots: Iterable[os.PathLike], std: str = "sample", hm_attack: Optional[str] = None,
                expected_seeds: Optional[Sequence[int]] = None, columns: Optional[Sequence[str]] = None,
                method_labels: Optional[Mapping[str, str]] = None, mix_protocols: bool = False,
                show_audit: bool = False) -> Report:
    """The :class:`Report` of every run under ``roots`` (see :func:`build_report` for the arguments).

    ``method_labels``: run folder -> method label, ahead of ``run.method`` and the derived labels.
    """
    skipped: list = []
    runs = collect_runs(roots, skipped)
    if method_labels:
        resolved = {str(Path(folder).resolve()): label for folder, label in method_labels.items()}
        for run in runs:
            run.method = resolved.get(str(Path(run.path).resolve()), run.method)
    runs = assign_methods(runs)
    return make_report(runs, std=std, hm_attack=hm_attack, expected_seeds=expected_seeds, columns=columns,
                       mix_protocols=mix_protocols, show_audit=show_audit, skipped=skipped)


def build_report(roots: Iterable[os.PathLike], fmt: str = "markdown", plots_dir: Optional[os.PathLike] = None,
                 std: str = "sample", hm_attack: Optional[str] = None,
                 expected_seeds: Optional[Sequence[int]] = None,
                 columns: Optional[Sequence[str]] = None, mix_protocols: bool = False,
                 show_audit: bool = False) -> str:
    """The report's text on the runs under ``roots``, in ``fmt`` (one of :data:`FORMATS`).

    ``plots_dir``: also write the figures there (PNG). ``std``: "sample"
    (n - 1, default) or "population" (n, as CoOp's ``parse_test_res.py``).
    ``hm_attack``: the robust column of the harmonic mean, e.g. "pgd-100@4"
    (default: the robust column most rows have). ``expected_seeds``: seeds
    every method should have (default: those any method of the same dataset
    and shots has). ``columns``: the accuracy columns to show (default all).
    ``mix_protocols``: one table for rows of different protocols (default:
    one per protocol, :mod:`~ampt.report.protocols`). ``show_audit``: add
    the audit table (markdown; json always holds it).
    A missing root, unknown format, column or attack raises ``ValueError`` /
    ``FileNotFoundError`` with a one-line message.
    """
    if fmt not in FORMATS:
        raise UserError(f'--format "{fmt}" is not valid; valid: {", ".join(FORMATS)}')
    if plots_dir is not None:
        from .plots import check_plots_dir

        check_plots_dir(Path(plots_dir))
    report = load_report(roots, std=std, hm_attack=hm_attack, expected_seeds=expected_seeds, columns=columns,
                         mix_protocols=mix_protocols, show_audit=show_audit)
    if plots_dir is not None:
        from .plots import write_plots

        write_plots(report, Path(plots_dir))
    return render(report, fmt)
