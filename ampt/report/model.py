"""The report's content, independent of its format: the rows of each table and their cells as text."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from .aggregate import (CLEAN, Row, Stat, average_rows, build_rows, column_order, default_hm_attack,
                        harmonic_mean, robust_columns, row_harmonic_mean, subset_columns)
from .audit_table import audit_flags_text
from .collect import Run, SkippedRun
from .protocols import ProtocolGroup, group_rows, label_title
from .router import RouterRow, router_caption, router_rows
from ..errors import UserError

STD_TEXT = {"sample": "sample std (n-1)", "population": "population std (n)"}
B2N_PARTS = ("base", "new", "HM")


@dataclass
class Report:
    runs: List[Run]
    rows: List[Row]  # trained on all classes (few-shot table)
    b2n_rows: List[Row]  # trained on the base classes (base-to-new table)
    std: str
    hm_attack: Optional[str]
    b2n_attack: Optional[str]
    columns: List[str] = field(default_factory=list)  # the few-shot table's accuracy columns
    router_rows: List[RouterRow] = field(default_factory=list)  # runs with router_stats.json
    subsets: Dict[str, List[int]] = field(default_factory=dict)  # column -> image counts of subset records
    mix_protocols: bool = False  # one table for rows of every protocol (--mix-protocols)
    show_audit: bool = False  # the audit table (--audit)
    explicit_columns: bool = False  # columns given (--columns): every protocol's table shows them all
    explicit_hm: bool = False  # hm_attack given (--hm-attack): every protocol's table uses it
    protocol: str = ""  # a protocol's table (see split): its label
    protocol_column: bool = False  # a mixed table of several protocols: a Protocol column
    skipped: List[SkippedRun] = field(default_factory=list)  # results.json files that could not be read

    def protocol_groups(self) -> List[ProtocolGroup]:
        """The tables' rows by protocol (:func:`ampt.report.protocols.group_rows`)."""
        return group_rows(self.rows + self.b2n_rows)

    def split(self) -> List["Report"]:
        """One report per protocol table; this report alone (with a caption) when one protocol, or mixed."""
        groups = self.protocol_groups()
        if len(groups) <= 1 or self.mix_protocols:
            label = groups[0].label if len(groups) == 1 else ""
            return [dataclasses.replace(self, protocol=label, protocol_column=len(groups) > 1)]
        return [self._part(group) for group in groups]

    def _part(self, group: ProtocolGroup) -> "Report":
        members = {id(r) for r in group.rows}
        rows = [r for r in self.rows if id(r) in members]
        b2n = [r for r in self.b2n_rows if id(r) in members]
        keys = {(r.method, r.dataset, r.shots, r.train_eps) for r in rows}
        columns = self.columns if self.explicit_columns else [
            c for c in self.columns if any(r.get(c) is not None for r in rows)]
        return dataclasses.replace(
            self, rows=rows, b2n_rows=b2n, columns=columns, protocol=group.label,
            hm_attack=self.hm_attack if self.explicit_hm or not rows else default_hm_attack(rows),
            b2n_attack=self.b2n_attack if self.explicit_hm or not b2n else default_hm_attack(b2n, "new"),
            router_rows=[r for r in self.router_rows if (r.method, r.dataset, r.shots, r.train_eps) in keys])

    def protocol_caption(self) -> str:
        return f" Protocol: {label_title(self.protocol)}." if self.protocol else ""

    @property
    def averages(self) -> List[Row]:
        return average_rows(self.rows)

    @property
    def b2n_averages(self) -> List[Row]:
        return average_rows(self.b2n_rows)

    def caption(self) -> str:
        hm = f"HM: harmonic mean of clean and {self.hm_attack} accuracy" if self.hm_attack else "HM: none (no robust record)"
        return (f"Accuracy (%) on the test split, mean ± {STD_TEXT[self.std]} over seeds; attacks as "
                f"attack-steps@eps (eps in 1/255); {hm}; Seeds: seeds with numbers / seeds expected"
                f"{self._subset_text()}.{self.protocol_caption()}")

    def _subset_text(self) -> str:
        shown = [(c, n) for c, n in self.subsets.items() if c in self.columns]
        if not shown:
            return ""
        return "; on a subset of the test images: " + ", ".join(
            f"{column} ({'/'.join(map(str, counts))} images per run)" for column, counts in shown)

    def skipped_text(self) -> str:
        """``Skipped 1 unreadable run: PATH (reason).``; "" when every results.json was read."""
        if not self.skipped:
            return ""
        n = len(self.skipped)
        return f"Skipped {n} unreadable run{'s' if n > 1 else ''}: " + "; ".join(s.text() for s in self.skipped) + "."

    def router_caption(self) -> str:
        return router_caption(STD_TEXT[self.std])

    def b2n_caption(self) -> str:
        robust = self.b2n_attack or "no robust record"
        return (f"Trained on the base classes: accuracy (%) on the base and new classes, mean ± "
                f"{STD_TEXT[self.std]} over seeds, HM of base and new (of the averages in Average rows); "
                f"robust: {robust}.{self.protocol_caption()}")


def make_report(runs: Sequence[Run], std: str = "sample", hm_attack: Optional[str] = None,
                expected_seeds: Optional[Sequence[int]] = None, columns: Optional[Sequence[str]] = None,
                mix_protocols: bool = False, show_audit: bool = False,
                skipped: Sequence[SkippedRun] = ()) -> Report:
    """Rows and settings of the report on ``runs`` (their ``method`` already assigned).

    ``mix_protocols``: one table for rows of different protocols (a Protocol
    column says which); ``show_audit``: the audit table follows; ``skipped``:
    the results.json files that could not be read (named in every format).
    """
    every = build_rows(runs, std=std, expected=expected_seeds)
    rows = [r for r in every if r.subsample == "all"]
    b2n = [r for r in every if r.subsample != "all"]
    available = [CLEAN] + robust_columns(rows) + sorted(
        {c for r in rows for (s, c) in r.stats if s == "all" and " [" in c}, key=column_order)
    if columns:
        unknown = [c for c in columns if c not in available]
        if unknown:
            raise UserError(f"--columns {', '.join(unknown)} not in the records; valid: {', '.join(available)}")
        available = list(columns)
    if hm_attack is not None and hm_attack not in robust_columns(rows) + robust_columns(b2n, "new"):
        valid = robust_columns(rows) or robust_columns(b2n, "new")
        raise UserError(f"--hm-attack {hm_attack} is not a robust column of these runs; valid: "
                         f"{', '.join(valid) or 'none (no robust record)'}")
    return Report(list(runs), rows, b2n, std, hm_attack or default_hm_attack(rows),
                  hm_attack or default_hm_attack(b2n, "new"), available, router_rows(runs, std),
                  subset_columns(r for r in runs if r.finished and r.subsample == "all"),
                  mix_protocols=mix_protocols, show_audit=show_audit, explicit_columns=bool(columns),
                  explicit_hm=hm_attack is not None, skipped=list(skipped))


# ---------------------------------------------------------------- cells as text
def stat_text(stat: Optional[Stat], n_row: int, pm: str = "±") -> str:
    if stat is None:
        return "-"
    text = f"{stat.mean:.1f}" if stat.std is None else f"{stat.mean:.1f} {pm} {stat.std:.1f}"
    return text if stat.n == n_row or n_row == 0 else f"{text} (n={stat.n})"


def seeds_text(row: Row) -> str:
    if row.is_average:
        return f"{row.n_datasets} dataset{'s' if row.n_datasets > 1 else ''}"
    expected = len(row.seeds) + len(row.missing) + len(row.unfinished)
    return f"{len(row.seeds)}" if expected == len(row.seeds) else f"{len(row.seeds)}/{expected}"


def flags_text(row: Row) -> str:
    flags = []
    if row.missing:
        flags.append("missing seed " + ",".join(map(str, row.missing)))
    if row.unfinished:
        flags.append("unfinished seed " + ",".join(map(str, row.unfinished)))
    flags += row.flags
    if row.is_average and row.n_datasets < row.of_datasets:
        flags.append(f"{row.n_datasets} of {row.of_datasets} datasets")
    if not row.is_average and not row.stats and not row.unfinished:
        flags.append("no test records")
    audit = audit_flags_text(row)
    if audit:
        flags.append(audit)
    return "; ".join(flags)


def fewshot_header(report: Report) -> List[str]:
    hm = [f"HM ({report.hm_attack})"] if report.hm_attack else []
    return ["Method", "Dataset", "Shots", "Train eps", *_protocol_header(report), "Seeds", *report.columns, *hm,
            "Flags"]


def _protocol_header(report: Report) -> List[str]:
    return ["Protocol"] if report.protocol_column else []


def _protocol_cell(report: Report, row: Row) -> List[str]:
    """The row's protocol label; a zero-shot row's with its backbone (it has no other label telling it apart)."""
    if not report.protocol_column:
        return []
    info = row.protocol_info
    if info is not None and info.kind == "zero-shot" and info.backbone:
        return [f"{row.protocol} ({info.backbone})"]
    return [row.protocol]


def fewshot_cells(report: Report, row: Row, pm: str = "±") -> List[str]:
    n = 0 if row.is_average else len(row.seeds)
    values = [stat_text(row.get(c), n, pm) for c in report.columns]
    hm = []
    if report.hm_attack:
        value = row_harmonic_mean(row, report.hm_attack)
        hm = ["-" if value is None else f"{value:.1f}"]
    return [row.method, row.dataset, str(row.shots), f"{row.train_eps:g}", *_protocol_cell(report, row),
            seeds_text(row), *values, *hm, flags_text(row)]


def b2n_header(report: Report) -> List[str]:
    groups = [("Clean", CLEAN)] + ([(report.b2n_attack, report.b2n_attack)] if report.b2n_attack else [])
    return ["Method", "Dataset", "Shots", "Train eps", *_protocol_header(report), "Seeds",
            *[f"{name} {part}" for name, _ in groups for part in B2N_PARTS], "Flags"]


def b2n_values(report: Report, row: Row) -> Dict[str, Dict[str, Optional[Any]]]:
    """``{column: {"base": Stat, "new": Stat, "HM": float}}`` of one base-to-new row."""
    out = {}
    for column in [CLEAN] + ([report.b2n_attack] if report.b2n_attack else []):
        base, new = row.get(column, "base"), row.get(column, "new")
        out[column] = {"base": base, "new": new,
                       "HM": harmonic_mean(base.mean if base else None, new.mean if new else None)}
    return out


def b2n_cells(report: Report, row: Row, pm: str = "±") -> List[str]:
    n = 0 if row.is_average else len(row.seeds)
    cells = []
    for parts in b2n_values(report, row).values():
        cells += [stat_text(parts["base"], n, pm), stat_text(parts["new"], n, pm),
                  "-" if parts["HM"] is None else f"{parts['HM']:.1f}"]
    return [row.method, row.dataset, str(row.shots), f"{row.train_eps:g}", *_protocol_cell(report, row),
            seeds_text(row), *cells, flags_text(row)]
