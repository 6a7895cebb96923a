"""Rules a product record must meet wherever it enters (catalog files, the admin API)."""

from __future__ import annotations

import math
import unicodedata
from typing import Any

MAX_ATTRIBUTE_DEPTH = 8


def product_id_problem(value: str) -> str | None:
    """Why an id could not come back unchanged in /v1/products/{id}, or None: no '/', no control or
    invisible characters, no surrounding whitespace (refused rather than silently trimmed)."""
    if "/" in value:
        return "must not contain '/'"
    bad = next((ch for ch in value if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")), None)
    if bad is not None:
        return f"must not contain control or invisible characters (found U+{ord(bad):04X})"
    if value != value.strip() or unicodedata.category(value[0]).startswith("Z") \
            or unicodedata.category(value[-1]).startswith("Z"):
        return "must not start or end with whitespace"
    return None


def text_problem(value: str) -> str | None:
    """Why a string cannot be stored or sent as UTF-8 (a lone surrogate from a JSON escape), or None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"is not valid Unicode text (a lone surrogate U+{ord(value[exc.start]):04X} at {exc.start})"
    return None


def attribute_problem(value: Any, depth_left: int = MAX_ATTRIBUTE_DEPTH) -> str | None:
    """Why an attribute value cannot be stored and served back as JSON, or None (iterative: no recursion limit)."""
    stack = [(value, depth_left)]
    while stack:
        item, left = stack.pop()
        if isinstance(item, str) and (problem := text_problem(item)):
            return problem
        if isinstance(item, float) and not math.isfinite(item):
            return "must hold finite numbers only (no NaN or Infinity)"
        if isinstance(item, (list, dict)):
            if left <= 0:
                return f"is nested more than {MAX_ATTRIBUTE_DEPTH} levels deep"
            values = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((v, left - 1) for v in values)
    return None
