"""The report's figures, written as PNG files (matplotlib's Agg backend; nothing is displayed).

- ``acc_vs_robustness_<S>shot.png``: per dataset, clean (x) against robust (y)
  accuracy, one marker per method setting, error bars = the table's std.
- ``accuracy_vs_shots.png``: per dataset (CoOp's 11 panels when all are
  there, only those present otherwise) plus the average, clean (solid) and
  robust (dashed) accuracy against shots.
- ``accuracy_vs_eps_<S>shot.png``: per dataset, accuracy under the harmonic
  mean's attack (same attack and steps) against its eps; eps 0 is clean.
- ``router_<method>_<dataset>_<S>shot_eps<E>.png``: AMPT's mean router
  weight per prompt and the mean entropy of the weights per epoch, one line
  style per seed (from ``router_stats.json``), and where recorded the mean
  total-variation distance of an image's weights to the batch mean and the
  mean cosine between the K prompts' text features.
"""
from __future__ import annotations

import math
import tempfile
import textwrap
import re
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .aggregate import CLEAN, Row, dataset_order
from .model import Report
from ..errors import UserError

MARKERS = "os^Dv<>pP*Xh"
LINESTYLES = ("-", "--", ":", "-.")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError('--plots needs matplotlib: pip install -e ".[report]"') from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def series_labels(rows: Sequence[Row]) -> Dict[Tuple[str, float], str]:
    """``(method, train eps) -> label``; the eps is named only for a method trained at several."""
    eps_of: Dict[str, set] = defaultdict(set)
    for row in rows:
        eps_of[row.method].add(row.train_eps)
    return {(r.method, r.train_eps): (f"{r.method} (train eps {r.train_eps:g})" if len(eps_of[r.method]) > 1
                                      else r.method) for r in rows}


def _grid(plt, n_panels: int, width: float = 3.6, height: float = 3.0):
    cols = min(4, n_panels)
    rows = math.ceil(n_panels / cols)
    # at least 7 in wide, so that a one-panel figure has room for its title and legend
    fig, axes = plt.subplots(rows, cols, figsize=(max(width * cols, 7.0), height * rows + 0.9), squeeze=False)
    for ax in axes.flat[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _save(plt, fig, path: Path, legend_from: Sequence = ()) -> Path:
    """Save ``fig``; one legend below the panels for every label of ``legend_from`` (axes)."""
    unique: Dict[str, object] = {}
    for ax in legend_from:
        handles, labels = ax.get_legend_handles_labels()
        unique.update({label: handle for label, handle in zip(labels, handles) if label not in unique})
    if unique:
        fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=min(4, len(unique)), fontsize=8,
                   frameon=False)
        fig.tight_layout(rect=(0, 0.06 + 0.03 * math.ceil(len(unique) / 4), 1, 1))
    else:
        fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _style(labels: Sequence[str]) -> Dict[str, Tuple[str, str]]:
    colors = [f"C{i % 10}" for i in range(len(labels))]
    return {label: (colors[i], MARKERS[i % len(MARKERS)]) for i, label in enumerate(sorted(set(labels)))}


def plot_acc_vs_robustness(report: Report, out: Path) -> List[Path]:
    plt, attack = _pyplot(), report.hm_attack
    if attack is None or not report.rows:
        return []
    labels = series_labels(report.rows)
    style = _style(list(labels.values()))
    files = []
    for shots in sorted({r.shots for r in report.rows}):
        rows = [r for r in report.rows if r.shots == shots and r.get(CLEAN) and r.get(attack)]
        datasets = sorted({r.dataset for r in rows}, key=dataset_order)
        if not datasets:
            continue
        fig, axes = _grid(plt, len(datasets))
        for ax, dataset in zip(axes, datasets):
            for row in (r for r in rows if r.dataset == dataset):
                label = labels[(row.method, row.train_eps)]
                clean, robust = row.get(CLEAN), row.get(attack)
                color, marker = style[label]
                ax.errorbar(clean.mean, robust.mean, xerr=clean.std or 0, yerr=robust.std or 0, fmt=marker,
                            color=color, label=label, markersize=7, capsize=3)
            ax.set(title=dataset, xlabel="clean accuracy (%)", ylabel=f"{attack} accuracy (%)")
            ax.grid(alpha=0.3)
        fig.suptitle(f"Accuracy vs robustness, {shots} shots")
        files.append(_save(plt, fig, out / f"acc_vs_robustness_{shots}shot.png", axes))
    return files


def plot_vs_shots(report: Report, out: Path) -> List[Path]:
    plt, attack = _pyplot(), report.hm_attack
    complete = [r for r in report.averages if r.n_datasets == r.of_datasets]  # a partial average misleads
    rows = [r for r in report.rows + complete if r.shots >= 1]  # -1: all training images
    if not rows:
        return []
    labels = series_labels(rows)
    style = _style(list(labels.values()))
    datasets = sorted({r.dataset for r in rows if not r.is_average}, key=dataset_order)
    panels = datasets + (["Average"] if complete else [])
    shots = sorted({r.shots for r in rows})
    fig, axes = _grid(plt, len(panels))
    for ax, dataset in zip(axes, panels):
        series: Dict[str, List[Row]] = defaultdict(list)
        for row in rows:
            if row.dataset == dataset:
                series[labels[(row.method, row.train_eps)]].append(row)
        for label, members in sorted(series.items()):
            members.sort(key=lambda r: r.shots)
            color, marker = style[label]
            for column, line in ((CLEAN, "-"), (attack, "--")):
                points = [(r.shots, r.get(column).mean) for r in members if column and r.get(column)]
                if points:
                    ax.plot(*zip(*points), line, marker=marker, color=color, label=label)
        ax.set(title=dataset, xlabel="shots per class", ylabel="accuracy (%)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [str(s) for s in shots])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    fig.suptitle(f"Accuracy vs shots: clean (solid), {attack or 'no attack'} (dashed)")
    return [_save(plt, fig, out / "accuracy_vs_shots.png", axes)]


def _same_attack(column: str, reference: str) -> Optional[float]:
    """The eps of ``column`` when it is ``reference``'s attack and steps at another eps, else None."""
    name, _, eps = column.partition("@")
    return float(eps) if " [" not in column and name == reference.partition("@")[0] else None


def plot_vs_eps(report: Report, out: Path) -> List[Path]:
    plt, attack = _pyplot(), report.hm_attack
    if attack is None or not report.rows:
        return []
    labels = series_labels(report.rows)
    style = _style(list(labels.values()))
    files = []
    for shots in sorted({r.shots for r in report.rows}):
        rows = [r for r in report.rows if r.shots == shots]
        datasets = sorted({r.dataset for r in rows}, key=dataset_order)
        fig, axes = _grid(plt, len(datasets))
        for ax, dataset in zip(axes, datasets):
            for row in (r for r in rows if r.dataset == dataset):
                points = sorted([(0.0, row.get(CLEAN).mean)] if row.get(CLEAN) else [])
                points += sorted((e, stat.mean) for (s, c), stat in row.stats.items()
                                 if s == "all" for e in [_same_attack(c, attack)] if e is not None)
                label = labels[(row.method, row.train_eps)]
                if points:
                    ax.plot(*zip(*points), "-", marker=style[label][1], color=style[label][0], label=label)
            ax.set(title=dataset, xlabel=f"eps (1/255), {attack.partition('@')[0]}", ylabel="accuracy (%)")
            ax.grid(alpha=0.3)
        fig.suptitle(f"Accuracy vs attack budget, {shots} shots (eps 0: clean)")
        files.append(_save(plt, fig, out / f"accuracy_vs_eps_{shots}shot.png", axes))
    return files


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")


def plot_router(report: Report, out: Path) -> List[Path]:
    """One figure per method setting and cell whose runs wrote ``router_stats.json`` with two or more prompts."""
    from ..utils.io import read_json

    plt = _pyplot()
    groups: Dict[Tuple, List] = defaultdict(list)
    for run in report.runs:
        if run.router_stats is not None:
            groups[(run.method, run.dataset, run.shots, run.train_eps)].append(run)
    files = []
    for (method, dataset, shots, eps), runs in sorted(groups.items()):
        runs = sorted(runs, key=lambda r: r.seed or 0)
        histories = [read_json(run.router_stats)["epochs"] for run in runs]
        if all(len(epochs[0]["mean_weights"]) < 2 for epochs in histories if epochs):
            continue  # one prompt: nothing is routed
        fig, (left, right, third) = plt.subplots(1, 3, figsize=(15, 3.8))
        for i, (run, epochs) in enumerate(zip(runs, histories)):
            x = [e["epoch"] for e in epochs]
            style = LINESTYLES[i % len(LINESTYLES)]
            for k in range(len(epochs[0]["mean_weights"]) if epochs else 0):
                left.plot(x, [e["mean_weights"][k] for e in epochs], style, color=f"C{k % 10}",
                          label=f"prompt {k + 1}" + (f", seed {run.seed}" if len(runs) > 1 else ""))
            right.plot(x, [e["entropy"] for e in epochs], style, color="C0", label=f"mean entropy, seed {run.seed}")
            right.plot(x, [e["entropy_of_mean"] for e in epochs], style, color="C1",
                       label=f"entropy of the mean, seed {run.seed}")
            if epochs:
                right.axhline(epochs[0]["max_entropy"], color="grey", lw=0.8, label="uniform (log K)")
            _plot_spread(third, epochs, style, run.seed)
        left.set(title="mean router weight per prompt", xlabel="epoch", ylabel="weight")
        right.set(title="entropy of the weights (nats)", xlabel="epoch", ylabel="entropy")
        third.set(title="per-image variation and bank similarity", xlabel="epoch", ylabel="value")
        for ax in (left, right, third):
            ax.grid(alpha=0.3)
            handles, labels = ax.get_legend_handles_labels()
            unique = dict(zip(labels, handles))
            ax.legend(unique.values(), unique.keys(), fontsize=7)
        fig.suptitle(textwrap.fill(f"{method} router, {dataset}, {shots} shots, train eps {eps:g}", 150))
        files.append(_save(plt, fig, out / f"router_{_safe(method)}_{_safe(dataset)}_{shots}shot_eps{eps:g}.png"))
    return files


def _plot_spread(ax, epochs: List[Dict], style: str, seed) -> None:
    """TV distance to the batch mean (0: weights ignore the image) and mean prompt-bank cosine, if recorded."""
    for key, colour, label in (("tv_from_batch_mean", "C2", "TV from batch mean"),
                               ("bank_cosine", "C3", "prompt-bank cosine")):
        points = [(e["epoch"], e[key]) for e in epochs if e.get(key) is not None]
        if points:
            ax.plot(*zip(*points), style, color=colour, label=f"{label}, seed {seed}")


def check_plots_dir(out: Path) -> None:
    """Create ``out`` and check a file can be written there; a :class:`UserError` naming it otherwise."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--plots {out} is a file: give a folder for the figures (it is created when missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise UserError(f"--plots {out}: cannot write there ({err.strerror or err}); "
                        "give a folder you can write to") from None


def write_plots(report: Report, out: Path) -> List[Path]:
    """Every figure the report's rows allow; returns the files written."""
    out = Path(out)
    check_plots_dir(out)
    return [*plot_acc_vs_robustness(report, out), *plot_vs_shots(report, out), *plot_vs_eps(report, out),
            *plot_router(report, out)]
