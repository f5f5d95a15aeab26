"""Group runs into table rows: per method setting and (dataset, shots, train eps), mean and std over seeds.

- A **column** is one number a record gives, named by
  :func:`ampt.attacks.naming.column_name`: ``clean``, ``<attack>-<steps>@<eps>``
  (``aa@4`` for parameter-free attacks; ``pgd-100x5@4`` with restarts,
  ``aa-custom(apgd-ce,apgd-t)@4``, ``pgd-100+bpda@4``), with `` [<prompt>]`` appended for an
  evaluation with another prompt than the run's own (a template, AMPT's
  ``uniform``). A non-default PGD step (``alpha`` other than eps / 4) adds
  `` [alpha A]``. Only ``split: test`` records count. When one run holds several
  records for a column (a subset and the full test set), the one on most
  images counts; a column that only subsets give is named in the caption.
  Records on as many images that differ otherwise (the attack seed, an image
  list) count in a fixed order (no image list first, then a known precision,
  then the lowest attack seed) and the row's Flags say so.
- **Stale records**: a finished run's record whose ``weights`` digest is not
  ``run.final_weights`` (an intermediate checkpoint) is left out and flagged.
- **Duplicate runs**: two finished runs of one row and seed: the first by
  path counts, the other is left out and flagged.
- **std** is the sample standard deviation (n - 1 in the denominator) by
  default, ``population`` (n; what numpy's ``std`` and CoOp's
  ``parse_test_res.py`` print) on request; none for one seed.
- **Seeds**: a seed is *missing* when some run of the same dataset and shots
  (any method) has it, or the expected list names it, and this method has no
  run with it; an *unfinished* run (``run.finished`` false, or a log without
  its final test) is listed, and its numbers are left out.
- **Averages** over datasets are the mean of the per-dataset means, per
  method setting, shots and train eps, in CoOp's dataset order; the row says
  over how many datasets when a method lacks some.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .audit_table import current_audit
from .collect import Run
from .protocols import Protocol, assign_protocols
from ..attacks.naming import column_name, parse_column
from ..errors import UserError
from ..results import KEY_DEFAULTS, RECORD_KEY_FIELDS

CLEAN = "clean"
STD_KINDS = ("sample", "population")
# CoOp's 11 datasets in the order of its tables; other datasets follow alphabetically.
COOP_ORDER = ("ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101",
              "FGVCAircraft", "SUN397", "DTD", "EuroSAT", "UCF101")
TRAINER_ORDER = ("ZeroshotCLIP", "CoOp", "APT", "AMPT")


@dataclass
class Stat:
    """One table entry: mean and std (None for one value) over ``n`` seeds."""

    mean: float
    std: Optional[float]
    n: int
    values: List[float] = field(default_factory=list)


@dataclass
class Row:
    method: str
    dataset: str  # the dataset the records are of
    train_dataset: str
    shots: int
    train_eps: float
    subsample: str  # the classes the runs were trained on
    migrated: str = ""  # "CoOp log" / "APT log" for runs read from logs
    seeds: List[int] = field(default_factory=list)  # finished seeds that gave numbers
    missing: List[int] = field(default_factory=list)
    unfinished: List[int] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)  # details for the json output
    flags: List[str] = field(default_factory=list)  # shown in the Flags of every format (duplicates, stale records)
    stats: Dict[Tuple[str, str], Stat] = field(default_factory=dict)  # (record subsample, column) -> Stat
    n_datasets: int = 1  # averages: datasets averaged
    of_datasets: int = 1  # averages: datasets in the group
    protocol: str = ""  # the runs' protocol label (ampt.report.protocols)
    protocol_info: Optional[Protocol] = None
    runs: List[Run] = field(default_factory=list, repr=False)  # the finished runs whose numbers the row holds
    audits: Dict[int, Dict[str, Any]] = field(default_factory=dict, repr=False)  # seed -> its current audit

    @property
    def is_average(self) -> bool:
        return self.dataset.startswith("Average")

    def get(self, column: str, subsample: str = "all") -> Optional[Stat]:
        return self.stats.get((subsample, column))


def alpha_suffix(record: Dict[str, Any]) -> str:
    """`` [alpha A]`` for an attack step other than the default eps / 4 (1/255 units); "" otherwise."""
    alpha = record.get("alpha")
    if record.get("attack") == CLEAN or isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        return ""
    if abs(float(alpha) - float(record.get("eps") or 0) / 4) < 1e-3:
        return ""
    return f" [alpha {float(alpha):g}]"


def column_id(record: Dict[str, Any], own_prompt: str) -> str:
    """The record's column: :func:`ampt.attacks.naming.column_name` plus `` [alpha A]``, `` [prompt]`` and
    `` [precision]``."""
    name = column_name(record) + alpha_suffix(record)
    prompt = record.get("prompt")
    if prompt not in (None, "learned", own_prompt):
        name = f"{name} [{prompt}]"
    precision = record.get("precision")
    if precision not in (None, "fp32"):  # a reduced-precision evaluation never shares the fp32 column
        name = f"{name} [{precision}]"
    return name


def column_order(column: str) -> Tuple:
    """clean first, then by attack name, eps, steps, restarts, EOT, BPDA, options, test-time method (the run's
    own number first, then each method non-adaptive, then adaptive); prompt variants after.

    Index 3 of the key is the eps and index 4 the steps (callers read them).
    """
    base, _, suffix = column.partition(" [")
    parsed = parse_column(base)
    if parsed is None:  # not a column name of ampt.attacks.naming: after the named ones, by text
        return (bool(suffix), 2, base, 0.0, 0, 1, 1, False, "", "", False, suffix)
    return (bool(suffix), 0 if parsed["attack"] == CLEAN else 1, parsed["attack"], parsed["eps"], parsed["steps"],
            parsed["restarts"], parsed["eot"], parsed["bpda"], parsed["options"], parsed.get("test_time", ""),
            parsed.get("adaptive", False), suffix)


def dataset_order(name: str) -> Tuple[int, str]:
    return (COOP_ORDER.index(name), "") if name in COOP_ORDER else (len(COOP_ORDER), name)


def method_order(method: str) -> Tuple[int, str]:
    trainer = method.split(" ", 1)[0]
    return (TRAINER_ORDER.index(trainer) if trainer in TRAINER_ORDER else len(TRAINER_ORDER), method)


def make_stat(values: Sequence[float], std: str = "sample") -> Stat:
    values = list(values)
    mean = statistics.fmean(values)
    if len(values) < 2:
        spread = None
    else:
        spread = statistics.stdev(values) if std == "sample" else statistics.pstdev(values)
    return Stat(mean, spread, len(values), values)


def harmonic_mean(a: Optional[float], b: Optional[float]) -> Optional[float]:
    """2ab / (a + b); 0 when both are 0; None when either is missing."""
    if a is None or b is None:
        return None
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


ColumnKey = Tuple[str, str, str]  # (eval dataset, record subsample, column)
# How a flag names a record key field.
FIELD_NAMES = {"seed": "attack seed", "image_list": "image list"}


def is_stale(run: Run, record: Dict[str, Any]) -> bool:
    """A finished run's record of other weights than its final model (records without digests count)."""
    final, weights = run.meta.get("final_weights"), record.get("weights")
    return run.finished and final is not None and weights is not None and weights != final


def _preference(record: Dict[str, Any]) -> Tuple:
    """Which of a column's records counts: most images, then no image list, then a known precision, then the
    lowest attack seed (a known one before none)."""
    seed = record.get("seed")
    known = isinstance(seed, (int, float)) and not isinstance(seed, bool)
    return (-int(record.get("n_samples") or 0), record.get("image_list") is not None,
            record.get("precision") is None, not known, float(seed) if known else 0.0)


def _test_records(run: Run) -> List[Dict[str, Any]]:
    return [r for r in run.records
            if r.get("split", "test") == "test" and isinstance(r.get("accuracy"), (int, float))]


def _own_prompt(run: Run) -> str:
    """The prompt of the run's own tests (its first record's): no `` [prompt]`` suffix."""
    return str(run.records[0].get("prompt") or "learned") if run.records else "learned"


def _column_key(run: Run, record: Dict[str, Any], own_prompt: str) -> ColumnKey:
    dataset = str(record.get("dataset") or run.dataset)
    default = run.subsample if dataset == run.dataset else "all"
    return dataset, str(record.get("subsample") or default), column_id(record, own_prompt)


def column_records(run: Run) -> Dict[ColumnKey, List[Dict[str, Any]]]:
    """Each column's current records of one run, the one that counts first (stale records left out)."""
    own = _own_prompt(run)
    out: Dict[ColumnKey, List[Dict[str, Any]]] = defaultdict(list)
    for record in _test_records(run):
        if not is_stale(run, record):
            out[_column_key(run, record, own)].append(record)
    return {key: sorted(records, key=_preference) for key, records in out.items()}  # stable: file order last


def counted_records(run: Run) -> Dict[ColumnKey, Dict[str, Any]]:
    """``(eval dataset, record subsample, column) -> record`` of one run: the record that counts."""
    return {key: records[0] for key, records in column_records(run).items()}


def _field(record: Dict[str, Any], name: str) -> Any:
    value = record.get(name, KEY_DEFAULTS.get(name))
    return f"{value:g}" if isinstance(value, float) else value  # 0 and 0.0 read the same


def _tie_flag(column: str, tied: List[Dict[str, Any]]) -> str:
    """``pgd-100@4: 2 records on 600 images, counted attack seed 0 (not 3)``."""
    differing = [f for f in RECORD_KEY_FIELDS if len({str(_field(r, f)) for r in tied}) > 1]
    chosen = ", ".join(f"{FIELD_NAMES.get(f, f)} {_field(tied[0], f)}" for f in differing)
    others = "; ".join(", ".join(str(_field(r, f)) for f in differing) for r in tied[1:])
    counted = f"counted {chosen} (not {others})" if differing else "counted the first written"
    return f"{column}: {len(tied)} records on {int(tied[0].get('n_samples') or 0)} images, {counted}"


def _stale_flag(run: Run, records: List[Dict[str, Any]]) -> str:
    """``stale record of epoch 2 left out (pgd-100@4)``: records of another checkpoint than the final one."""
    own = _own_prompt(run)
    epochs = sorted({str(r.get("checkpoint_epoch")) for r in records if r.get("checkpoint_epoch") is not None})
    of = f"epoch {', '.join(epochs)}" if epochs else "other weights"
    columns = ", ".join(sorted({column_id(r, own) for r in records}, key=column_order))
    plural = "s" if len(records) > 1 else ""
    return f"stale record{plural} of {of} left out ({columns})"


def record_flags(run: Run, dataset: str) -> List[str]:
    """What the report chose among one run's records of ``dataset``: stale records left out, and columns
    whose most-images records differ in another key field (attack seed, image list)."""
    flags = []
    stale = [r for r in _test_records(run) if is_stale(run, r) and str(r.get("dataset") or run.dataset) == dataset]
    if stale:
        flags.append(_stale_flag(run, stale))
    for (d, _, column), records in sorted(column_records(run).items()):
        tied = [r for r in records if _preference(r)[0] == _preference(records[0])[0]]
        if d == dataset and len(tied) > 1:
            flags.append(_tie_flag(column, tied))
    return flags


def _counted_values(run: Run) -> Dict[Tuple[str, str, str], Tuple[int, float]]:
    """``(eval dataset, record subsample, column) -> (images, accuracy)`` of one run (most images wins)."""
    return {k: (int(r.get("n_samples") or 0), float(r["accuracy"])) for k, r in counted_records(run).items()}


def run_values(run: Run) -> Dict[Tuple[str, str, str], float]:
    """``(eval dataset, record subsample, column) -> accuracy`` of one run (most images wins)."""
    return {k: v for k, (_, v) in _counted_values(run).items()}


def subset_columns(runs: Iterable[Run]) -> Dict[str, List[int]]:
    """Columns whose numbers come from fewer images than the same run's largest record of that dataset
    (e.g. AutoAttack on a fixed subset): column -> the image counts."""
    sizes: Dict[str, set] = defaultdict(set)
    for run in runs:
        counted = _counted_values(run)
        largest: Dict[str, int] = defaultdict(int)
        for (dataset, _, _), (n, _) in counted.items():
            largest[dataset] = max(largest[dataset], n)
        for (dataset, _, column), (n, _) in counted.items():
            if 0 < n < largest[dataset]:
                sizes[column].add(n)
    return {column: sorted(n) for column, n in sorted(sizes.items())}


# method, dataset, train dataset, shots, train eps, subsample, protocol (label, backbone, robust)
RowKey = Tuple[str, str, str, int, float, str, Tuple]


def _row_keys(run: Run) -> List[RowKey]:
    """A row per method and cell; runs of other protocols or backbones never share one."""
    datasets = {d for d, _, _ in run_values(run)} or {run.dataset}
    protocol = (run.protocol.label, *run.protocol.backbone_key) if run.protocol is not None else ("", "", None)
    return [(run.method, d, run.dataset, run.shots, run.train_eps, run.subsample, protocol) for d in sorted(datasets)]


def expected_seeds(runs: Iterable[Run], expected: Optional[Sequence[int]]) -> Dict[Tuple[str, int, str], List[int]]:
    """Seeds expected per (dataset, shots, trained classes): the given list, else every seed any method ran.

    Eval-only runs of loaded weights (their own rows) expect no seed of others, and others none of theirs.
    """
    seeds: Dict[Tuple[str, int, str], set] = defaultdict(set)
    for run in runs:
        for key in _row_keys(run):
            seeds[(key[1], key[3], key[5])].update([run.seed] if run.seed is not None and not run.eval_only else [])
    if expected is not None:
        return {k: sorted(set(expected)) for k in seeds}
    return {k: sorted(v) for k, v in seeds.items()}


def build_rows(runs: Sequence[Run], std: str = "sample", expected: Optional[Sequence[int]] = None) -> List[Row]:
    """One :class:`Row` per method setting and (dataset, shots, train eps, trained classes), sorted."""
    if std not in STD_KINDS:
        raise UserError(f'std "{std}" is not valid; valid: {", ".join(STD_KINDS)}')
    assign_protocols(runs)
    members: Dict[RowKey, List[Run]] = defaultdict(list)
    for run in runs:
        for key in _row_keys(run):
            members[key].append(run)
    wanted = expected_seeds(runs, expected)
    rows = [_make_row(key, group, std, _row_expected(key, group, wanted)) for key, group in members.items()]
    return sorted(rows, key=row_order)


def _row_expected(key: RowKey, runs: List[Run], wanted: Dict[Tuple[str, int, str], List[int]]) -> List[int]:
    """The row's expected seeds; none for eval-only rows (a one-off evaluation of loaded weights)."""
    return [] if all(run.eval_only for run in runs) else wanted.get((key[1], key[3], key[5]), [])


def row_order(row: "Row") -> Tuple:
    """Table order: shots, then per dataset (CoOp's order; averages last) the methods by train eps."""
    return (row.subsample, row.shots, row.is_average, row.train_dataset != row.dataset, row.train_dataset,
            dataset_order(row.dataset), row.train_eps, method_order(row.method), row.protocol)


def _make_row(key: RowKey, runs: List[Run], std: str, expected: List[int]) -> Row:
    method, dataset, train_dataset, shots, train_eps, subsample, protocol = key
    row = Row(method, dataset, train_dataset, shots, train_eps, subsample,
              migrated=next((r.source for r in runs if r.source), ""), protocol=protocol[0],
              protocol_info=runs[0].protocol)
    by_column: Dict[Tuple[str, str], Dict[int, float]] = defaultdict(dict)
    counted: Dict[int, Run] = {}
    for run in sorted(runs, key=lambda r: (r.seed is None, r.seed or 0, str(r.path))):
        seed = run.seed if run.seed is not None else -1
        if not run.finished:
            row.unfinished.append(seed)
            row.notes.append(f"unfinished: {run.path}")
            continue
        values = {(sub, column): v for (d, sub, column), v in run_values(run).items() if d == dataset}
        if seed in counted and values:
            row.flags.append(f"seed {seed} twice: left out {run.path} (counted {counted[seed].path})")
            continue
        row.flags += [f"seed {seed}: {flag}" for flag in record_flags(run, dataset)]
        if not values:
            continue
        counted[seed] = run
        for key, value in values.items():
            by_column[key][seed] = value
        row.seeds.append(seed)
        row.runs.append(run)
        audit = current_audit(run)
        if audit is not None:
            row.audits[seed] = audit
    row.stats = {k: make_stat([v[s] for s in sorted(v)], std) for k, v in by_column.items()}
    row.seeds.sort()
    row.unfinished = sorted(set(row.unfinished) - set(row.seeds))
    row.missing = [s for s in expected if s not in row.seeds and s not in row.unfinished]
    return row


def average_rows(rows: Sequence[Row]) -> List[Row]:
    """Per method, shots, train eps, classes and source dataset: the mean over datasets (2 or more)."""
    groups: Dict[Tuple, List[Row]] = defaultdict(list)
    for row in rows:
        cross = row.train_dataset if row.train_dataset != row.dataset else ""
        groups[(row.subsample, row.shots, row.train_eps, cross)].append(row)
    averages = []
    for (subsample, shots, train_eps, cross), group in groups.items():
        datasets = {r.dataset for r in group}
        if len(datasets) < 2:
            continue
        by_method: Dict[Tuple, List[Row]] = defaultdict(list)
        for row in group:  # one method of two protocols (backbones) is averaged per protocol
            info = row.protocol_info
            by_method[(row.method, row.protocol, info.backbone_key if info else ())].append(row)
        for (method, *_), members in by_method.items():
            averages.append(_average(method, members, cross, len(datasets)))
    return sorted(averages, key=row_order)


def _average(method: str, members: List[Row], cross: str, of_datasets: int) -> Row:
    first = members[0]
    label = f"Average (from {cross})" if cross else "Average"
    row = Row(method, label, cross or label, first.shots, first.train_eps, first.subsample, first.migrated,
              n_datasets=len(members), of_datasets=of_datasets, protocol=first.protocol,
              protocol_info=first.protocol_info)
    columns = {k for r in members for k in r.stats}
    for key in columns:
        means = [r.stats[key].mean for r in members if key in r.stats]
        row.stats[key] = Stat(statistics.fmean(means), None, len(means), means)
    if len(members) < of_datasets:
        row.notes.append(f"over {len(members)} of {of_datasets} datasets")
    for r in members:
        row.missing += [s for s in r.missing if s not in row.missing]
        row.unfinished += [s for s in r.unfinished if s not in row.unfinished]
    return row


def robust_columns(rows: Sequence[Row], subsample: str = "all") -> List[str]:
    return sorted({c for r in rows for (s, c) in r.stats if s == subsample and c != CLEAN and " [" not in c},
                  key=column_order)


def default_hm_attack(rows: Sequence[Row], subsample: str = "all") -> Optional[str]:
    """The robust column most rows have: the harmonic mean's default.

    Ties: the column at more rows' training eps, then the run's own number (no test-time method), then more
    steps, then larger eps.
    """
    counts: Dict[str, int] = defaultdict(int)
    at_train_eps: Dict[str, int] = defaultdict(int)
    for row in rows:
        for (s, column) in row.stats:
            if s == subsample and column != CLEAN and " [" not in column:
                counts[column] += 1
                at_train_eps[column] += column_order(column)[3] == row.train_eps
    if not counts:
        return None
    return max(counts, key=lambda c: (counts[c], at_train_eps[c], column_order(c)[9] == "", column_order(c)[4],
                                      column_order(c)[3], c))


def row_harmonic_mean(row: Row, attack: Optional[str], subsample: str = "all") -> Optional[float]:
    """HM of the row's mean clean and mean robust (``attack``) accuracy."""
    clean, robust = row.get(CLEAN, subsample), row.get(attack, subsample) if attack else None
    return harmonic_mean(clean.mean if clean else None, robust.mean if robust else None)


def finite(value: Optional[float]) -> Optional[float]:
    return None if value is None or math.isnan(value) else value
