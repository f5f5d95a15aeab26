#!/usr/bin/env python
"""Table of AMPT router settings: accuracy and router diagnostics, mean +- sample std over seeds.

    python scripts/ampt/router_table.py OUT [--split val]

OUT holds ``<setting>/seed<S>/`` run folders (scripts/ampt/router_selection.sh).
Columns: clean and PGD-10 accuracy on the split, the last epoch's per-image
entropy of the router weights, TV distance to the batch mean and prompt-bank
cosine, and on the split the MI of the weights with the label (clean images)
and the mean TV between an image's clean and attacked weights.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional


def _fmt(values: List[float], digits: int, n_runs: int) -> str:
    """mean ± sample std; ``(n=k)`` when only k of the runs have the number."""
    if not values:
        return "-"
    mean = statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f} (n=1)"
    text = f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"
    return text + (f" (n={len(values)})" if len(values) < n_runs else "")


def _run_numbers(run: Path, split: str, prompt: str = "learned") -> Optional[Dict[str, float]]:
    try:
        results = json.loads((run / "results.json").read_text())
    except FileNotFoundError:
        return None
    if not results["run"].get("finished"):
        return None
    out: Dict[str, float] = {}
    for r in results["records"]:
        if r.get("prompt", "learned") != prompt:
            continue
        if r["split"] == split and r["attack"] == "clean":
            out["clean"] = r["accuracy"]
        if r["split"] == split and r["attack"] == "pgd" and r["steps"] == 10:
            out["pgd10"] = r["accuracy"]
    stats_file = run / "router_stats.json"
    if stats_file.is_file():
        stats = json.loads(stats_file.read_text())
        last = stats["epochs"][-1]
        out.update(entropy=last["entropy"], log_k=last["max_entropy"], tv=last["tv_from_batch_mean"])
        if last.get("bank_cosine") is not None:
            out["bank"] = last["bank_cosine"]
        test = stats.get("test")
        if test and test.get("split") == split:
            out["mi_label"] = test["clean"]["mi_label"]
            if "tv_clean_to_attacked" in test:
                out["tv_attack"] = test["tv_clean_to_attacked"]
    return out


COLUMNS = [("clean", "clean %", 1), ("pgd10", "PGD-10 %", 1), ("entropy", "entropy", 3), ("tv", "TV spread", 3),
           ("bank", "bank cos", 2), ("mi_label", "MI label", 3), ("tv_attack", "TV clean->adv", 3)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--split", default="val", help="split of the accuracy records (val: train.py's final test with "
                   "TEST.SPLIT val; test: evaluate.py records)")
    p.add_argument("--prompt", default="learned", help='prompt of the records ("uniform": the same prompts mixed 1/K)')
    args = p.parse_args()
    print("| setting | seeds | " + " | ".join(c[1] for c in COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for setting in sorted(d for d in args.out.iterdir() if d.is_dir()):
        runs = [n for n in (_run_numbers(r, args.split, args.prompt) for r in sorted(setting.glob("seed*"))) if n]
        if not runs:
            continue
        cells = [_fmt([r[key] for r in runs if key in r], digits, len(runs)) for key, _, digits in COLUMNS]
        print(f"| {setting.name} | {len(runs)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
