"""The report as text: markdown (the terminal default), csv (one line per number), LaTeX (booktabs), json."""
from __future__ import annotations

import csv
import io
import json
from typing import Any, Dict, List, Optional

from .aggregate import Row, Stat, row_harmonic_mean, row_order
from .protocols import label_title
from .audit_table import AUDIT_CAPTION, audit_cells, audit_header, audit_json, check_names
from ..errors import UserError
from .model import (Report, b2n_cells, b2n_header, b2n_values, fewshot_cells,
                    fewshot_header, flags_text)
from .router import COLUMNS as ROUTER_COLUMNS, router_cells, router_header

FORMATS = ("markdown", "csv", "latex", "json")


def render(report: Report, fmt: str = "markdown") -> str:
    renderers = {"markdown": markdown, "csv": to_csv, "latex": latex, "json": to_json}
    if fmt not in renderers:
        raise UserError(f'--format "{fmt}" is not valid; valid: {", ".join(FORMATS)}')
    return renderers[fmt](report)


def _blocks(rows: List[Row], cells) -> List[List[List[str]]]:
    """The rows' cells in table order, cut into blocks (a shots value's datasets, then its averages)."""
    blocks: List[List[List[str]]] = []
    last = None
    for row in sorted(rows, key=row_order):
        key = (row.shots, row.is_average)
        if key != last:
            blocks.append([])
            last = key
        blocks[-1].append(cells(row))
    return blocks


def _sections(report: Report, pm: str = "±") -> List[tuple]:
    """``(title, caption, header, blocks of rows)`` of each non-empty table."""
    sections = []
    if report.rows:
        sections.append(("Few-shot", report.caption(), fewshot_header(report),
                         _blocks(report.rows + report.averages, lambda r: fewshot_cells(report, r, pm))))
    if report.b2n_rows:
        sections.append(("Base-to-new", report.b2n_caption(), b2n_header(report),
                         _blocks(report.b2n_rows + report.b2n_averages, lambda r: b2n_cells(report, r, pm))))
    if report.router_rows:
        sections.append(("Router", report.router_caption(), router_header(),
                         [[router_cells(r, pm) for r in report.router_rows]]))
    return sections


def _audit_rows(report: Report) -> List[Row]:
    return sorted(report.rows, key=row_order) + sorted(report.b2n_rows, key=row_order)


def markdown(report: Report) -> str:
    """The tables; with several protocols (and no ``mix_protocols``) one ``### Protocol: ...`` heading each."""
    from tabulate import tabulate

    if not report.runs:
        return "\n\n".join(filter(None, ["No runs found (no results.json, and no CoOp/APT log.txt).",
                                         report.skipped_text()]))
    parts = []
    parts_of = report.split()
    for part in parts_of:
        if len(parts_of) > 1:
            parts.append(f"### Protocol: {label_title(part.protocol)}")
        for title, caption, header, blocks in _sections(part):
            body = [cells for block in blocks for cells in block]
            parts.append(f"{title}. {caption}\n\n"
                         f"{tabulate(body, headers=header, tablefmt='github', disable_numparse=True)}")
    if report.show_audit:
        rows = _audit_rows(report)
        checks = check_names(rows)
        body = [audit_cells(row, checks) for row in rows]
        parts.append(f"Audit. {AUDIT_CAPTION}\n\n"
                     f"{tabulate(body, headers=audit_header(checks), tablefmt='github', disable_numparse=True)}")
    if report.skipped:
        parts.append(report.skipped_text())
    return "\n\n".join(parts)


# ---------------------------------------------------------------- csv
CSV_FIELDS = ("table", "method", "dataset", "train_dataset", "shots", "train_eps", "trained_classes", "classes",
              "column", "mean", "std", "n", "seeds", "missing_seeds", "unfinished_seeds", "flags", "protocol",
              "protocol_tables")


def _tables_of(report: Report) -> Dict[int, List[str]]:
    """``id(row) -> the protocol tables it is shown in`` (a baseline may be in several)."""
    out: Dict[int, List[str]] = {}
    for group in report.protocol_groups():
        for row in group.rows:
            out.setdefault(id(row), []).append(group.label)
    return out


def _csv_lines(table: str, row: Row, entries: Dict[tuple, Any],
               tables: Optional[Dict[int, List[str]]] = None) -> List[Dict[str, Any]]:
    common = {"table": table, "method": row.method, "dataset": row.dataset, "train_dataset": row.train_dataset,
              "shots": row.shots, "train_eps": f"{row.train_eps:g}", "trained_classes": row.subsample,
              "seeds": " ".join(map(str, row.seeds)), "missing_seeds": " ".join(map(str, row.missing)),
              "unfinished_seeds": " ".join(map(str, row.unfinished)), "flags": flags_text(row),
              "protocol": row.protocol, "protocol_tables": " ".join((tables or {}).get(id(row), [row.protocol]))}
    lines = []
    for (classes, column), value in entries.items():
        stat = value if isinstance(value, Stat) else None
        mean = stat.mean if stat else value
        if mean is None:
            continue
        lines.append({**common, "classes": classes, "column": column, "mean": f"{mean:.4f}",
                      "std": "" if stat is None or stat.std is None else f"{stat.std:.4f}",
                      "n": stat.n if stat else ""})
    return lines


def to_csv(report: Report) -> str:
    """Long format: one line per (row, column) with mean, std and n; HM lines have column ``HM(...)``."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    tables = _tables_of(report)
    for row in report.rows + report.averages:
        entries: Dict[tuple, Any] = dict(row.stats)
        if report.hm_attack:
            entries[("all", f"HM({report.hm_attack})")] = row_harmonic_mean(row, report.hm_attack)
        writer.writerows(_csv_lines("few-shot", row, entries, tables))
    for row in report.b2n_rows + report.b2n_averages:
        entries = {}
        for column, parts in b2n_values(report, row).items():
            entries.update({("base", column): parts["base"], ("new", column): parts["new"],
                            ("base,new", f"HM({column})"): parts["HM"]})
        writer.writerows(_csv_lines("base-to-new", row, entries, tables))
    for router in report.router_rows:
        common = {"table": "router", "method": router.method, "dataset": router.dataset, "train_dataset": "",
                  "shots": router.shots, "train_eps": f"{router.train_eps:g}", "trained_classes": "all",
                  "classes": "all", "seeds": " ".join(map(str, router.seeds))}
        writer.writerows({**common, "column": column, "mean": f"{stat.mean:.6g}",
                          "std": "" if stat.std is None else f"{stat.std:.6g}", "n": stat.n}
                         for column, stat in router.stats.items())
    writer.writerows({"table": "skipped", "flags": f"skipped unreadable run: {skipped.text()}"}
                     for skipped in report.skipped)
    return out.getvalue()


# ---------------------------------------------------------------- latex
LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
PM = "\x00pm\x00"  # placeholder for the plus-minus sign, escaped as math after the rest


def latex_escape(text: str) -> str:
    escaped = "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)
    return escaped.replace(PM, r"$\pm$").replace("±", r"$\pm$")


def _latex_table(caption: str, header: List[str], blocks: List[List[List[str]]]) -> str:
    align = "l" * 2 + "r" * (len(header) - 3) + "l"
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(caption)}}}",
             rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in header) + r" \\"]
    for block in blocks:
        lines.append(r"\midrule")
        lines += [" & ".join(latex_escape(c) for c in cells) + r" \\" for cells in block]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def latex(report: Report) -> str:
    """One booktabs ``table`` per section and protocol (needs ``\\usepackage{booktabs}``); no audit table.

    Unreadable runs are named in the first table's caption (a paragraph when there is no table).
    """
    tables = [[caption, header, blocks] for part in report.split()
              for _, caption, header, blocks in _sections(part, pm=PM)]
    skipped = report.skipped_text()
    if skipped and tables:
        tables[0][0] = f"{tables[0][0]} {skipped}"
    text = "\n\n".join(_latex_table(*table) for table in tables)
    return (text or latex_escape(skipped)) + "\n"


# ---------------------------------------------------------------- json
def _stat_json(stat: Optional[Stat]) -> Optional[Dict[str, Any]]:
    return None if stat is None else {"mean": stat.mean, "std": stat.std, "n": stat.n, "values": stat.values}


def _row_json(row: Row, tables: Optional[Dict[int, List[str]]] = None) -> Dict[str, Any]:
    return {"protocol": row.protocol, "protocol_info": row.protocol_info.to_dict() if row.protocol_info else None,
            "protocol_tables": (tables or {}).get(id(row), [row.protocol]), "flags": flags_text(row),
            "method": row.method, "dataset": row.dataset, "train_dataset": row.train_dataset, "shots": row.shots,
            "train_eps": row.train_eps, "trained_classes": row.subsample, "migrated": row.migrated or None,
            "seeds": row.seeds, "missing_seeds": row.missing, "unfinished_seeds": row.unfinished,
            "notes": row.notes, "n_datasets": row.n_datasets if row.is_average else None,
            "columns": {f"{column}" if classes == "all" else f"{column} [{classes} classes]": _stat_json(stat)
                        for (classes, column), stat in sorted(row.stats.items())}}


def report_dict(report: Report) -> Dict[str, Any]:
    """Everything: rows with their protocol and per-seed values, averages, base-to-new, router, protocol
    tables (labels and the rows of each, as indices into ``rows`` / ``base_to_new``) and the audit."""
    tables = _tables_of(report)

    def few(row: Row) -> Dict[str, Any]:
        return {**_row_json(row, tables),
                "hm": row_harmonic_mean(row, report.hm_attack) if report.hm_attack else None}

    def b2n(row: Row) -> Dict[str, Any]:
        parts = b2n_values(report, row)
        return {**_row_json(row, tables),
                "base_to_new": {c: {"base": _stat_json(p["base"]), "new": _stat_json(p["new"]), "hm": p["HM"]}
                                for c, p in parts.items()}}

    return {"std": report.std, "hm_attack": report.hm_attack, "b2n_attack": report.b2n_attack,
            "columns": report.columns, "caption": report.caption(),
            "rows": [few(r) for r in report.rows], "averages": [few(r) for r in report.averages],
            "base_to_new": [b2n(r) for r in report.b2n_rows],
            "base_to_new_averages": [b2n(r) for r in report.b2n_averages],
            "router": [{"method": r.method, "dataset": r.dataset, "shots": r.shots, "train_eps": r.train_eps,
                        "seeds": r.seeds, "columns": {c: _stat_json(r.stats.get(c)) for c in ROUTER_COLUMNS}}
                       for r in report.router_rows],
            "protocols": [{"label": g.label, "title": g.title,
                           "rows": [i for i, r in enumerate(report.rows) if any(r is m for m in g.rows)],
                           "base_to_new": [i for i, r in enumerate(report.b2n_rows) if any(r is m for m in g.rows)]}
                          for g in report.protocol_groups()],
            "mix_protocols": report.mix_protocols,
            "audit": [audit_json(r) for r in _audit_rows(report)],
            "runs": [str(r.path) for r in report.runs],
            "skipped": [{"path": s.path, "reason": s.reason} for s in report.skipped],
            "skipped_text": report.skipped_text()}


def to_json(report: Report) -> str:
    return json.dumps(report_dict(report), indent=2) + "\n"
