"""``python -m ampt.report ROOT [ROOT...]``: tables (and plots) from the results.json files under ROOTs."""
# --format robustbench --out DIR writes RobustBench model cards (ampt.report.robustbench) instead of text.
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Mapping, Optional

from ..errors import UserError
from ..utils.cli import exit_process, run_cli
from ..utils.io import write_text_atomic
from .aggregate import STD_KINDS
from .tables import FORMATS

ROBUSTBENCH = "robustbench"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ampt.report", description=__doc__.split(": ", 1)[1])
    p.add_argument("roots", nargs="+", type=Path, help="folders searched for run folders (results.json, or "
                                                          "log.txt of CoOp's / APT's own code)")
    p.add_argument("--format", default="markdown", choices=(*FORMATS, ROBUSTBENCH),
                   help="output format (default markdown); robustbench: one RobustBench model card (JSON) per "
                        "method, backbone, dataset, shots, train eps and eval eps, written to --out DIR")
    p.add_argument("--plots", type=Path, default=None, metavar="DIR", help="also write the figures (PNG) to DIR")
    p.add_argument("--std", default="sample", choices=STD_KINDS,
                   help="sample: n-1 in the denominator (default); population: n (CoOp's parse_test_res.py)")
    p.add_argument("--hm-attack", default=None, metavar="COLUMN",
                   help="robust column of the harmonic mean, e.g. pgd-100@4 (default: the one most rows have)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="seeds every method should have (default: those any method of the dataset and shots has)")
    p.add_argument("--columns", nargs="+", default=None, help="accuracy columns to show, e.g. clean pgd-10@4")
    p.add_argument("--output", type=Path, default=None, help="write the text to this file instead of stdout")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="--format robustbench: the folder of the model cards (required there)")
    p.add_argument("--force", action="store_true", help="--format robustbench: replace existing cards in --out")
    p.add_argument("--mix-protocols", action="store_true",
                   help="one table for rows of different protocols (robust/vanilla backbone, train eps, zero-shot, "
                        "test-time), with a Protocol column; default: one table per protocol")
    p.add_argument("--audit", action="store_true",
                   help="add the audit table (python -m ampt.audit): per row and check pass / flag / skip / —")
    return p


def write_output(text: str, path: Path) -> None:
    """``--output FILE``, written atomically (Ctrl-C never leaves half a file); a one-line error otherwise."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(text, path)
    except OSError as err:
        raise UserError(f"--output {path}: cannot write it ({err.strerror or err}); give a file path you can "
                        "write to") from None


def main(argv: Optional[List[str]] = None, method_labels: Optional[Mapping[str, str]] = None) -> int:
    """The CLI; ``method_labels`` (run folder -> method label) is how ``python -m ampt.sweep report`` names runs."""
    from . import load_report
    from .tables import render

    args = build_parser().parse_args(argv)
    if args.format == ROBUSTBENCH and args.out is None:
        raise UserError("--format robustbench writes one file per model: give the folder with --out DIR")
    if args.format != ROBUSTBENCH and (args.out is not None or args.force):
        raise UserError("--out and --force are for --format robustbench (text goes to --output FILE)")
    if args.plots is not None:  # before any work: a wrong folder is not found after the tables
        from .plots import check_plots_dir

        check_plots_dir(args.plots)
    report = load_report(args.roots, std=args.std, hm_attack=args.hm_attack, expected_seeds=args.seeds,
                         columns=args.columns, method_labels=method_labels, mix_protocols=args.mix_protocols,
                         show_audit=args.audit)
    if args.format == ROBUSTBENCH:
        from .robustbench import write_robustbench

        paths = write_robustbench(report, args.out, force=args.force)
        print("\n".join(str(p) for p in paths))
        print(f"{len(paths)} RobustBench card(s) written to {args.out}", file=sys.stderr)
        return 0
    text = render(report, args.format)
    if args.output is not None:
        write_output(text if text.endswith("\n") else text + "\n", args.output)
    else:
        print(text)
    if args.plots is not None:
        from .plots import write_plots

        files = write_plots(report, args.plots)
        print(f"{len(files)} figure(s) written to {args.plots}", file=sys.stderr)
    return 0


def cli() -> int:
    """``main`` with one-line user errors (exit 2) and one line for Ctrl-C (exit 130), no traceback."""
    return run_cli(main)


if __name__ == "__main__":
    exit_process(cli())
