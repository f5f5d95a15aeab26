"""The protocol of a run, and which table each row goes in: numbers of different protocols never mix silently.

A protocol is what a number can be compared with: the backbone the prompts
were learned on (adversarially fine-tuned or not) and the training budget.
:func:`derive_protocol` gives each run one short label:

- ``zero-shot``: nothing learned (trainer ``ZeroshotCLIP``, or
  ``run.zero_shot: true`` in results.json);
- ``test-time``: the model optimises at inference (a record with
  ``test_time_optimisation: true``, or ``run.test_time_optimisation: true``);
- ``robust-backbone@E``: learned at train eps E (1/255; 0 = clean training)
  on an adversarially fine-tuned backbone (APT-style, e.g. at 4/255);
- ``vanilla-backbone@E``: on a backbone known not to be adversarially
  fine-tuned (FAP-style, e.g. at 1/255);
- ``backbone-<name>@E``: no reliable signal whether the backbone is robust
  (``Protocol.robust`` is None, ``Protocol.signal`` says so).

Whether the backbone is robust: the first of

1. ``run.robust_backbone`` (true/false) in results.json, a declaration;
2. robust visual weights loaded (``run.robust_weights``, the config's
   ``MODEL.BACKBONE.ROBUST_WEIGHTS``): robust;
3. a name token of the backbone or its open_clip pretrained tag starting with
   ``tecoa``, ``fare``, ``robust`` or ``adversarial`` (RobustVLM's
   ``hf-hub:chs20/tecoa4-clip``, ``fare2``, the demo's
   ``tiny_clip_digits_tecoa.pt``): robust;
4. one of OpenAI's CLIP models (``ViT-B/32``, ``RN50``, ...), or an open_clip
   model with a web-data pretrained tag (``openai``, ``laion2b_*``,
   ``datacomp_*``, ...): vanilla;
5. otherwise unknown.

**Tables** (:func:`group_rows`): rows trained with adversarial images (train
eps > 0) and test-time rows form one table per label. Zero-shot rows and
rows trained without adversarial images (train eps 0, e.g. CoOp) are
*baselines*: each goes into every such table of the same backbone (name,
robust weights and robustness) whose train eps it was evaluated at (or it has
no robust number); a clean-trained baseline that joins none gets its own
table by its label, and a zero-shot one that joins none then joins a
clean-trained table of its backbone, else the ``zero-shot`` table.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence

from ..attacks.naming import parse_column

if TYPE_CHECKING:  # pragma: no cover
    from .aggregate import Row
    from .collect import Run

ZERO_SHOT, TEST_TIME = "zero-shot", "test-time"
ROBUST, VANILLA, UNKNOWN = "robust-backbone", "vanilla-backbone", "backbone"
KIND_ORDER = (ROBUST, VANILLA, UNKNOWN, TEST_TIME, ZERO_SHOT)
ZERO_SHOT_TRAINERS = ("zeroshotclip", "zeroshotclip2")
# OpenAI's CLIP weights (clip.available_models()): not adversarially fine-tuned.
OPENAI_MODELS = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14",
                 "ViT-L/14@336px")
# open_clip pretrained tags of web-data contrastive pretraining (not adversarial).
VANILLA_TAGS = re.compile(r"^(openai|laion\w*|datacomp\w*|commonpool\w*|metaclip\w*|dfn\w*|webli\w*|yfcc15m|cc12m|"
                          r"merged2b\w*|frozen_laion\w*)$", re.IGNORECASE)
ROBUST_TOKEN = re.compile(r"(?:^|[^a-z0-9])(tecoa|fare|robust|adversarial)[a-z0-9]*", re.IGNORECASE)
TRUE_TEXT = ("1", "true", "yes")


@dataclass(frozen=True)
class Protocol:
    """One run's protocol: ``label`` (module docstring) and what it was derived from."""

    label: str
    kind: str  # zero-shot | test-time | robust-backbone | vanilla-backbone | backbone
    backbone: str  # short backbone name (+ robust weights file), "" when unknown
    robust: Optional[bool]  # the backbone is adversarially fine-tuned; None: no reliable signal
    signal: str  # what decided ``robust``
    train_eps: float

    @property
    def baseline(self) -> bool:
        """Zero-shot, or learned without adversarial images: shown beside the trained rows of its backbone."""
        return self.kind == ZERO_SHOT or (self.kind != TEST_TIME and self.train_eps == 0)

    @property
    def backbone_key(self) -> tuple:
        return (self.backbone, self.robust)

    def title(self) -> str:
        return label_title(self.label)

    def to_dict(self) -> Dict[str, Any]:
        return {"label": self.label, "kind": self.kind, "backbone": self.backbone or None,
                "robust_backbone": self.robust,
                "robust_signal": self.signal, "train_eps": self.train_eps}


def label_title(label: str) -> str:
    """``robust-backbone@4`` -> ``robust backbone, train eps 4/255`` (the tables' headings)."""
    if label in (ZERO_SHOT, TEST_TIME):
        return "zero-shot" if label == ZERO_SHOT else "test-time optimisation"
    kind, _, eps = label.rpartition("@")
    if kind == ROBUST:
        what = "robust backbone"
    elif kind == VANILLA:
        what = "vanilla backbone"
    elif kind.startswith(UNKNOWN + "-"):
        what = f"backbone {kind[len(UNKNOWN) + 1:]} (robustness unknown)"
    else:
        return label
    return f"{what}, clean training" if eps in ("0", "") else f"{what}, train eps {eps}/255"


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, (int, float)) and bool(value)) or str(value).lower() in TRUE_TEXT


def _short_name(name: str) -> str:
    """``ViT-B/32`` as it is; a checkpoint path or folder by its last part; ``hf-hub:org/x`` as ``org/x``."""
    name = name.strip()
    if not name or name in OPENAI_MODELS:
        return name
    if name.startswith("hf-hub:"):
        return name[len("hf-hub:"):]
    if "/" in name or "\\" in name:
        return PurePosixPath(name.replace("\\", "/").rstrip("/")).name or name
    return name


def _backbone(run: "Run") -> tuple:
    """``(name, pretrained tag, robust weights)`` of the run's backbone, "" where not known."""
    meta, settings = run.meta, run.settings
    label = str(meta.get("backbone") or settings.get("MODEL.BACKBONE.NAME") or "")
    tag = str(settings.get("MODEL.BACKBONE.PRETRAINED") or "") if isinstance(
        settings.get("MODEL.BACKBONE.PRETRAINED"), str) else ""
    match = re.match(r"^(.*) \(([^()]*)\)$", label)  # backbone_label: "NAME (pretrained)"
    if match:
        label, tag = match.group(1), tag or match.group(2)
    weights = str(meta.get("robust_weights") or settings.get("MODEL.BACKBONE.ROBUST_WEIGHTS") or "")
    return label, tag, weights


def backbone_robustness(run: "Run") -> tuple:
    """``(robust: bool | None, signal)`` of the run's backbone (rule in the module docstring)."""
    declared = run.meta.get("robust_backbone")
    if isinstance(declared, bool):
        return declared, "run.robust_backbone"
    name, tag, weights = _backbone(run)
    if weights:
        return True, "robust visual weights (MODEL.BACKBONE.ROBUST_WEIGHTS)"
    for text in (name, tag):
        found = ROBUST_TOKEN.search(text or "")
        if found:
            return True, f'backbone name "{found.group(0).strip("/_-. :")}"'
    if name in OPENAI_MODELS and not tag:
        return False, "OpenAI CLIP weights"
    if tag and VANILLA_TAGS.match(tag):
        return False, f"open_clip pretrained tag {tag}"
    if not name:
        return None, "unknown: the run names no backbone"
    return None, "unknown: no signal whether the backbone is adversarially fine-tuned"


def is_test_time(run: "Run") -> bool:
    return _truthy(run.meta.get("test_time_optimisation", False)) or any(
        r.get("test_time_optimisation") is True for r in run.records)


def is_zero_shot(run: "Run") -> bool:
    return run.trainer.lower().replace("_", "").replace("-", "") in ZERO_SHOT_TRAINERS or _truthy(
        run.meta.get("zero_shot", False))


def derive_protocol(run: "Run") -> Protocol:
    """The :class:`Protocol` of ``run`` from its settings, run block and records (module docstring)."""
    name, _, weights = _backbone(run)
    short = _short_name(name)
    if weights:
        short = f"{short}+{_short_name(weights)}"
    robust, signal = backbone_robustness(run)
    eps = float(run.train_eps or 0)
    if is_test_time(run):
        kind, label = TEST_TIME, TEST_TIME
    elif is_zero_shot(run):
        kind, label, eps = ZERO_SHOT, ZERO_SHOT, 0.0
    elif robust is None:
        kind, label = UNKNOWN, f"{UNKNOWN}-{short or 'unknown'}@{eps:g}"
    else:
        kind = ROBUST if robust else VANILLA
        label = f"{kind}@{eps:g}"
    return Protocol(label, kind, short, robust, signal, eps)


def assign_protocols(runs: Iterable["Run"]) -> None:
    """Set ``run.protocol`` on every run that has none (in place)."""
    for run in runs:
        if run.protocol is None:
            run.protocol = derive_protocol(run)


# ---------------------------------------------------------------- tables
@dataclass
class ProtocolGroup:
    """One table's rows: those of ``label`` and the baselines shown with them."""

    label: str
    rows: List["Row"]

    @property
    def title(self) -> str:
        return label_title(self.label)


def _robust_eps(row: "Row") -> set:
    eps = set()
    for (_, column) in row.stats:
        parsed = parse_column(column.partition(" [")[0])
        if parsed is not None and parsed["attack"] != "clean":
            eps.add(parsed["eps"])
    return eps


def _label_order(label: str) -> tuple:
    kind, _, eps = label.rpartition("@") if "@" in label else (label, "", "0")
    base = kind if kind in KIND_ORDER else UNKNOWN
    try:
        value = float(eps)
    except ValueError:
        value = 0.0
    return (KIND_ORDER.index(base), value == 0, value, label)


def _fits(baseline: "Row", group_rows: Sequence["Row"]) -> bool:
    """Same backbone as a row of the group, and evaluated at the group's train eps (or no robust number)."""
    info = baseline.protocol_info
    if info is None or not any(r.protocol_info is not None and r.protocol_info.backbone_key == info.backbone_key
                               for r in group_rows):
        return False
    train_eps = {r.train_eps for r in group_rows if r.train_eps > 0}
    measured = _robust_eps(baseline)
    return not train_eps or not measured or bool(measured & train_eps)


def group_rows(rows: Sequence["Row"]) -> List[ProtocolGroup]:
    """The tables (module docstring): each row once per table it belongs to, tables in a fixed order."""
    trained: Dict[str, List["Row"]] = {}
    clean: List["Row"] = []
    zero: List["Row"] = []
    for row in rows:
        info = row.protocol_info
        if info is None or not info.baseline:
            trained.setdefault(row.protocol, []).append(row)
        elif info.kind == ZERO_SHOT:
            zero.append(row)
        else:
            clean.append(row)
    groups = {label: list(members) for label, members in trained.items()}
    clean_groups: Dict[str, List["Row"]] = {}
    for row in clean:
        homes = [label for label, members in trained.items() if _fits(row, members)]
        for label in homes:
            groups[label].append(row)
        if not homes:
            clean_groups.setdefault(row.protocol, []).append(row)
    for label, members in clean_groups.items():
        groups[label] = list(members)
    for row in zero:
        homes = [label for label, members in trained.items() if _fits(row, members)]
        if not homes:
            homes = [label for label, members in clean_groups.items() if _fits(row, members)]
        if not homes:
            homes = [ZERO_SHOT]
            groups.setdefault(ZERO_SHOT, [])
        for label in homes:
            groups[label].append(row)
    return [ProtocolGroup(label, groups[label]) for label in sorted(groups, key=_label_order)]
