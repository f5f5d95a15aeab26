"""``ADV.TRAIN.LOSS`` expressions: a weighted sum of registered terms, e.g. ``fap+0.5*zs_kl``.

Grammar: ``term ("+" term)*`` with ``term = [weight "*"] name``; a weight is
a non-negative number (default 1); spaces are ignored; a name appears once.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

from ..errors import UserError
from ..registry import unknown_name_message

KEY = "ADV.TRAIN.LOSS"


def _weight(text: str, expression: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        raise UserError(f'{KEY} "{expression}": the weight "{text}" is not a number; write e.g. "ce+0.5*zs_kl"') from None
    if not math.isfinite(weight) or weight < 0:
        raise UserError(f'{KEY} "{expression}": the weight {text} must be a finite number >= 0')
    return weight


def parse_expression(expression: str, valid: Sequence[str]) -> List[Tuple[str, float]]:
    """``[(name, weight), ...]`` in the written order; a one-line :class:`UserError` for anything else."""
    text = expression.replace(" ", "")
    if not text:
        raise UserError(f'{KEY} is empty: name a term or a weighted sum, e.g. "ce" or "ce+0.5*zs_kl"; '
                        f'terms: {", ".join(valid)}')
    terms: List[Tuple[str, float]] = []
    for part in text.split("+"):
        if not part:
            raise UserError(f'{KEY} "{expression}" has an empty term (a "+" with nothing beside it)')
        if part.count("*") > 1:
            raise UserError(f'{KEY} "{expression}": "{part}" has more than one "*"; write WEIGHT*NAME')
        weight_text, _, name = part.rpartition("*")
        weight = _weight(weight_text, expression) if weight_text or "*" in part else 1.0
        if name not in valid:
            raise UserError(f"{KEY} \"{expression}\": " + unknown_name_message("loss term", name, list(valid)))
        if any(name == seen for seen, _ in terms):
            raise UserError(f'{KEY} "{expression}" names the term "{name}" twice: give it one weight')
        terms.append((name, weight))
    return terms


def format_expression(terms: Sequence[Tuple[str, float]]) -> str:
    """The canonical text of a sum: weight 1 unwritten, other weights as ``%g``."""
    return "+".join(name if weight == 1 else f"{weight:g}*{name}" for name, weight in terms)
