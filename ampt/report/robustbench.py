"""RobustBench-compatible model cards: ``python -m ampt.report ROOT --format robustbench --out DIR``.

One JSON file per (method, backbone, dataset, shots, train eps, trained
classes, eval eps, threat model): the report's row of that method, dataset,
shots and train eps, at one evaluation eps. Shots, train eps and the trained
classes are in the key because each is another model (a RobustBench entry is
one model). The file holds RobustBench's model-card fields and an ``ampt``
block with what RobustBench has no field for; the JSON Schema is
:data:`SCHEMA_PATH` (``ampt/report/schemas/robustbench_ampt.schema.json``).
Every file is validated against it before anything is written (when
``jsonschema`` is installed) and written atomically; existing files are
refused unless ``force``.

Choices (docs/results_format.md, section "RobustBench export"):

- ``autoattack_acc``: the mean over seeds of the standard AutoAttack column
  (``aa@<eps>``); else ``aa-plus``, else ``aa-rand`` (a footnote names the
  version). Without any AutoAttack record: the lowest robust column at that
  eps (the strongest attack run), a footnote naming it, and
  ``unreliable: true`` (it is an upper bound on AutoAttack's number, not one).
- ``unreliable`` is also true when the audit flagged a seed of the row.
- ``reported`` equals ``autoattack_acc`` (the toolkit's own measurement);
  ``external`` is null; ``additional_data`` false; ``link``, ``authors``,
  ``venue`` come from the run block when it has them, else "".
- ``number_forward_passes``: ``run.number_forward_passes``, else
  ``run.test_time_steps`` + 1 for a test-time method, else 1.
- ``dataset`` is the dataset name in lower case (RobustBench's style);
  ``eps`` a string such as "4/255"; accuracies are strings with 2 decimals.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..attacks.naming import parse_column
from ..errors import UserError
from ..utils.io import write_json
from .aggregate import CLEAN, Row, Stat, counted_records, harmonic_mean
from .audit_table import row_checks
from .collect import Run
from .model import Report
from .protocols import TEST_TIME, ZERO_SHOT

SCHEMA_PATH = Path(__file__).with_name("schemas") / "robustbench_ampt.schema.json"
FORMAT = "ampt-robustbench/1"
AUTOATTACKS = ("aa", "aa-plus", "aa-rand")  # in order of preference
DEFAULT_THREAT = "Linf"


def load_schema() -> Dict[str, Any]:
    with open(SCHEMA_PATH, "r", encoding="utf-8") as f:
        return json.load(f)


def validator():
    """A ``jsonschema`` validator of :data:`SCHEMA_PATH`; None when ``jsonschema`` is not installed."""
    try:
        import jsonschema
    except ImportError:
        return None
    schema = load_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def validate_card(card: Dict[str, Any], check=None) -> None:
    """Raise ``ValueError`` naming the first schema violation of ``card`` (no-op without ``jsonschema``)."""
    check = check if check is not None else validator()
    if check is None:
        return
    errors = sorted(check.iter_errors(card), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(map(str, first.absolute_path)) or "(top)"
        raise ValueError(f"RobustBench card {card.get('name')!r} does not match {SCHEMA_PATH.name} at {where}: "
                         f"{first.message}")


# ---------------------------------------------------------------- helpers
def safe_name(text: str) -> str:
    """Letters, digits and ``. _ + -``; anything else becomes ``-`` (file-system safe on every OS)."""
    out = re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.")
    return out[:80] or "x"


def _percent(value: float) -> str:
    return f"{value:.2f}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _int(value: Any) -> Optional[int]:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> Optional[float]:
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _stat(stat: Optional[Stat], seeds: Sequence[int] = (), n_samples: Sequence[int] = ()) -> Optional[Dict[str, Any]]:
    if stat is None:
        return None
    out: Dict[str, Any] = {"mean": stat.mean, "std": stat.std, "n": stat.n, "values": list(stat.values)}
    if seeds:
        out["seeds"] = list(seeds)
    if n_samples:
        out["n_samples"] = list(n_samples)
    return out


def _records(row: Row, classes: str, column: str) -> List[Tuple[int, Dict[str, Any]]]:
    """``(seed, record)`` behind ``column`` of ``row``, one per seed (the record that counts)."""
    out = []
    for run in row.runs:
        record = counted_records(run).get((row.dataset, classes, column))
        if record is not None:
            out.append((run.seed if run.seed is not None else -1, record))
    return out


def _robust_columns(row: Row, classes: str) -> Dict[Tuple[float, str], List[str]]:
    """``(eps, threat model) -> robust columns`` of the row (own prompt, fp32: no `` [...]`` suffix)."""
    out: Dict[Tuple[float, str], List[str]] = {}
    for (sub, column) in row.stats:
        if sub != classes or " [" in column:
            continue
        parsed = parse_column(column)
        if parsed is None or parsed["attack"] == CLEAN or parsed["eps"] <= 0:
            continue
        records = _records(row, classes, column)
        threat = str(records[0][1].get("threat_model") or DEFAULT_THREAT) if records else DEFAULT_THREAT
        out.setdefault((parsed["eps"], threat), []).append(column)
    return out


def _choose(row: Row, classes: str, columns: List[str]) -> Tuple[str, str]:
    """``(column, "autoattack" | "strongest")``: the AutoAttack column (by version), else the lowest mean."""
    for version in AUTOATTACKS:
        found = sorted(c for c in columns if parse_column(c)["attack"] == version)
        if found:
            return max(found, key=lambda c: (row.get(c, classes).n, c)), "autoattack"
    return min(columns, key=lambda c: (row.get(c, classes).mean, c)), "strongest"


# ---------------------------------------------------------------- the ampt block's parts
def _trainer_node(run: Run) -> Dict[str, Any]:
    """The run's ``TRAINER.<NAME>.*`` settings (keys without the prefix)."""
    nodes: Dict[str, Dict[str, Any]] = {}
    for key, value in run.settings.items():
        parts = key.split(".")
        if len(parts) >= 3 and parts[0] == "TRAINER":
            nodes.setdefault(parts[1], {})[".".join(parts[2:])] = value
    wanted = re.sub(r"[^A-Z0-9]", "", run.trainer.upper())
    if wanted in nodes:
        return nodes[wanted]
    return next(iter(nodes.values())) if len(nodes) == 1 else {}


def prompt_spec(run: Run) -> Dict[str, Any]:
    """Kind, number of prompts K, learned tokens and depth, from the trainer's config node."""
    node = _trainer_node(run)
    settings = {k: v for k, v in node.items() if isinstance(v, (str, int, float, bool, tuple)) or v is None}
    n_prompts = _int(node.get("N_PROMPTS")) or 1
    text, vision = _int(node.get("N_CTX_TEXT")), _int(node.get("N_CTX_VISION"))
    if run.protocol is not None and run.protocol.kind == ZERO_SHOT:
        kind, tokens, depth = "template", None, None
    elif text is not None or vision is not None:
        kind, tokens = "vision-language", {"text": text, "vision": vision}
        depth = {"text": _int(node.get("PROMPT_DEPTH_TEXT")), "vision": _int(node.get("PROMPT_DEPTH_VISION"))}
    elif node.get("N_CTX") is not None:
        tokens, depth = _int(node.get("N_CTX")), _int(node.get("PROMPT_DEPTH"))
        kind = "mixture" if n_prompts > 1 else "deep" if depth is not None else "text"
        depth = 1 if depth is None else depth
    elif node.get("N_TOKENS") is not None:
        kind, tokens, depth = "visual", _int(node.get("N_TOKENS")), None
    else:
        kind, tokens, depth = "unknown", None, None
    return {"kind": kind, "n_prompts": n_prompts, "tokens": tokens, "depth": depth, "settings": _jsonable(settings)}


def training_spec(run: Run, train_eps: float) -> Dict[str, Any]:
    """The training attack and objective: the run block's (what the trainer used), else ``ADV.TRAIN.*``."""
    meta, settings = run.meta, run.settings
    adversarial = train_eps > 0
    objective = meta.get("objective") if isinstance(meta.get("objective"), dict) else {}

    def setting(meta_key: str, key: str) -> Any:
        return meta.get(meta_key) if meta.get(meta_key) is not None else settings.get(key)

    alpha = _float(setting("train_alpha", "ADV.TRAIN.ALPHA"))
    if adversarial and alpha is not None and alpha < 0:  # -1: APT's 2/3 eps
        alpha = round(2 * train_eps / 3, 4)
    out = {"adversarial": adversarial, "eps": train_eps,
           "steps": _int(setting("train_steps", "ADV.TRAIN.STEPS")) if adversarial else None,
           "alpha": alpha if adversarial else None,
           "loss": None, "attack_loss": None,
           "attack_prompt": str(setting("train_attack_prompt", "ADV.TRAIN.PROMPT")) if adversarial and setting(
               "train_attack_prompt", "ADV.TRAIN.PROMPT") is not None else None}
    loss = setting("train_loss", "ADV.TRAIN.LOSS")
    if loss is not None and (adversarial or meta.get("train_loss") is not None):
        out["loss"] = str(loss)
    attack_loss = objective.get("attack_loss") or settings.get("ADV.TRAIN.ATTACK_LOSS")
    if adversarial and attack_loss:
        out["attack_loss"] = str(attack_loss)
    if objective:
        out["objective"] = _jsonable(objective)
    return out


def evaluation_spec(column: str, records: List[Tuple[int, Dict[str, Any]]]) -> Dict[str, Any]:
    """The evaluation attack of ``column``: its record's ``attack_config`` and fields (defaults for old records)."""
    record = records[0][1] if records else {}
    config = record.get("attack_config") if isinstance(record.get("attack_config"), dict) else {}

    def get(key: str, default: Any = None) -> Any:
        return config[key] if config.get(key) is not None else record.get(key, default)

    attacks = config.get("attacks")
    return {"column": column, "attack": str(record.get("attack") or column.partition("@")[0]),
            "library": None if get("library") is None else str(get("library")),
            "version": None if config.get("version") is None else str(config["version"]),
            "attacks": [str(a) for a in attacks] if isinstance(attacks, (list, tuple)) else None,
            "steps": _int(get("steps")), "alpha": _float(get("alpha")),
            "restarts": _int(get("restarts", 1)) or 1, "n_target_classes": _int(config.get("n_target_classes")),
            "eot_iter": _int(get("eot_iter", 1)) or 1, "queries": _int(config.get("queries")),
            "seed": _int(get("seed")), "bpda": bool(record.get("bpda", False)),
            "access": None if record.get("access") is None else str(record["access"]),
            "attack_config": _jsonable(config) if config else None}


def audit_spec(row: Row) -> Dict[str, Any]:
    checks = row_checks(row)
    flags = {name: c["flagged_seeds"] for name, c in checks.items() if c["flagged_seeds"]}
    audited = sorted(row.audits)
    status = ("flag" if flags else "not audited" if not audited else
              "pass" if len(audited) == len(row.seeds) else "incomplete")
    return {"status": status, "audited_seeds": audited, "flags": flags}


def _forward_passes(run: Run, test_time: bool) -> int:
    declared = _int(run.meta.get("number_forward_passes"))
    if declared and declared > 0:
        return declared
    steps = _int(run.meta.get("test_time_steps"))
    return steps + 1 if test_time and steps else 1


# ---------------------------------------------------------------- cards
def _card(report: Report, row: Row, classes: str, eps: float, threat: str, columns: List[str]) -> Dict[str, Any]:
    run = row.runs[0]
    info = row.protocol_info
    column, source = _choose(row, classes, columns)
    robust, clean = row.get(column, classes), row.get(CLEAN, classes)
    records = _records(row, classes, column)
    first = records[0][1] if records else {}
    test_time = any(r.get("test_time_optimisation") is True for _, r in records) or (
        info is not None and info.kind == TEST_TIME)
    audit = audit_spec(row)
    version = parse_column(column)["attack"]
    notes = []
    if source == "strongest":
        notes.append(f"No AutoAttack record: robust accuracy under {column}, the strongest attack run "
                     f"(an upper bound on AutoAttack's).")
    elif version != "aa":
        notes.append(f"AutoAttack version {version.partition('-')[2]} ({column}), not standard.")
    if audit["flags"]:
        notes.append("Audit flags: " + ", ".join(f"{n} (seed {','.join(map(str, s))})"
                                                 for n, s in audit["flags"].items()) + ".")
    backbone = str(run.meta.get("backbone") or run.settings.get("MODEL.BACKBONE.NAME") or
                   (info.backbone if info else "") or "unknown")
    accuracy = {}
    for name in [CLEAN, *sorted(columns)]:
        behind = _records(row, classes, name)
        accuracy[name] = _stat(row.get(name, classes), [s for s, _ in behind],
                               [int(r.get("n_samples") or 0) for _, r in behind])
    b2n = None
    if row.subsample != "all":
        b2n = {}
        for name in (CLEAN, column):
            base, new = row.get(name, "base"), row.get(name, "new")
            b2n[name] = {"base": _stat(base), "new": _stat(new),
                         "hm": harmonic_mean(base.mean if base else None, new.mean if new else None)}
    hashes = sorted({str(r["images_sha256"]) for _, r in records if r.get("images_sha256")})
    lists = sorted({str(r["image_list"]) for _, r in records if r.get("image_list")})
    ampt = {
        "format": FORMAT, "method": row.method, "trainer": run.trainer, "backbone": backbone,
        "dataset": row.dataset, "train_dataset": row.train_dataset, "shots": row.shots,
        "trained_classes": "base" if row.subsample != "all" else "all", "classes": classes,
        "threat_model": threat, "eps": eps,
        "protocol": info.to_dict() if info else {"label": row.protocol or "?", "kind": "backbone", "backbone": None,
                                                  "robust_backbone": None, "robust_signal": "unknown",
                                                  "train_eps": row.train_eps},
        "seeds": list(row.seeds), "missing_seeds": list(row.missing), "unfinished_seeds": list(row.unfinished),
        "std": report.std,
        "clean": accuracy[CLEAN], "robust": {**accuracy[column], "column": column, "source": source},
        "accuracy": {k: v for k, v in accuracy.items() if v is not None}, "base_to_new": b2n,
        "prompt": prompt_spec(run), "training": training_spec(run, row.train_eps),
        "evaluation": evaluation_spec(column, records),
        "precision": str(first.get("precision") or "fp32"),
        "images": {"n_samples": [int(r.get("n_samples") or 0) for _, r in records],
                   "image_list": ",".join(lists) if lists else None, "images_sha256": hashes},
        "adaptive": str(first.get("adaptive") or "none"), "test_time_optimisation": bool(test_time),
        "audit": audit, "runs": [str(r.path) for r in row.runs],
    }
    if len({json.dumps(evaluation_spec(column, [sr]), sort_keys=True) for sr in records}) > 1:
        notes.append("The seeds' evaluation settings differ; evaluation shows the first seed's.")
    if notes:
        ampt["notes"] = notes
    meta = run.meta
    return {
        "link": str(meta.get("link") or ""), "name": row.method, "authors": str(meta.get("authors") or ""),
        "additional_data": False, "number_forward_passes": _forward_passes(run, test_time),
        "dataset": row.dataset.lower(), "venue": str(meta.get("venue") or ""), "architecture": backbone,
        "eps": f"{eps:g}/255", "clean_acc": _percent(clean.mean) if clean else _percent(0.0),
        "reported": _percent(robust.mean), "autoattack_acc": _percent(robust.mean),
        "unreliable": source == "strongest" or bool(audit["flags"]),
        "footnote": " ".join(notes) or None, "external": None, "ampt": _jsonable(ampt),
    }


def file_name(card: Dict[str, Any]) -> str:
    a = card["ampt"]
    backbone = a["protocol"].get("backbone") or a["backbone"]
    parts = [a["method"], backbone, a["dataset"], f"{a['shots']}shot", f"train{a['protocol']['train_eps']:g}",
             f"{a['threat_model']}-{a['eps']:g}"]
    name = "__".join(safe_name(str(p)) for p in parts)
    return name + ("__b2n" if a["trained_classes"] == "base" else "") + ".json"


def robustbench_cards(report: Report) -> List[Tuple[str, Dict[str, Any]]]:
    """``(file name, card)`` of every (row, eval eps, threat model) with a robust number; names made unique."""
    out: List[Tuple[str, Dict[str, Any]]] = []
    used: Dict[str, int] = {}
    for row in report.rows + report.b2n_rows:
        if row.is_average or not row.runs:
            continue
        classes = "all" if row.subsample == "all" else "base"
        if row.get(CLEAN, classes) is None:
            continue  # RobustBench needs clean_acc
        for (eps, threat), columns in sorted(_robust_columns(row, classes).items()):
            card = _card(report, row, classes, eps, threat, columns)
            name = file_name(card)
            if name in used:  # two rows alike after making the names safe: keep both
                used[name] += 1
                name = f"{name[:-len('.json')]}__{used[name]}.json"
            used.setdefault(name, 1)
            out.append((name, card))
    return out


def write_robustbench(report: Report, out_dir: Path, force: bool = False) -> List[Path]:
    """Write the cards to ``out_dir`` (validated, atomically); refuses existing files unless ``force``."""
    out_dir = Path(out_dir)
    cards = robustbench_cards(report)
    if not cards:
        raise UserError("--format robustbench: no row has both a clean and a robust (eps > 0) test record; "
                        "nothing to export")
    check = validator()
    for _, card in cards:
        validate_card(card, check)
    paths = [out_dir / name for name, _ in cards]
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise UserError(f"--out {out_dir}: {existing[0].name}{more} exist; pass --force to replace them")
    for path, (_, card) in zip(paths, cards):
        write_json(card, path)
    return paths
