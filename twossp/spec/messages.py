"""How a user's value and a near miss read in a problem message (sweep and view files alike)."""

from __future__ import annotations

import difflib
from typing import Any, Iterable


def show(value: Any, limit: int = 60) -> str:
    """``repr`` of a user's value, cut short: messages stay one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def did_you_mean(name: Any, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the known name closest to a misspelt one, else nothing."""
    close = difflib.get_close_matches(str(name)[:200], list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
