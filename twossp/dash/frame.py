"""What a view shows: frames (named tables of typed rows) and how each column is shown. Every
output (a terminal table, CSV, JSON, Markdown, LaTeX, a chart) is drawn from the same frames, so
they always agree; the rows keep the database's values (fractions, seconds, counts) and only the
text outputs format them."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Iterable, Literal

#: How a column is shown, besides a Python format spec (".2f", "+.1%", ",", ".3g"):
#: ``change``: a relative change (a fraction) in percent, "+4.2%" below 100%, "+132%" above.
NAMED_FORMATS = ("change",)

#: how a run's state is coloured wherever it is shown (stored states, and the display's own)
STATE_STYLES = {"completed": "green", "failed": "red", "running": "yellow", "pending": "dim", "not started": "dim",
                "queued": "dim", "skipped": "dim cyan"}

Best = Literal["lower", "higher"]
Good = Literal["negative", "positive"]


@dataclass(frozen=True)
class Column:
    """One column: ``name`` keys the rows (and heads CSV and JSON), ``header`` heads the tables.

    ``best``: the best value of each group is bold (lower or higher is better). ``good``: a change
    is green on its good side and red on the other (``negative``: a fall is good, as for
    perplexity). ``spread``: the column holding a ± figure (a standard deviation) shown after the
    value. ``bar``: the column holding the full amount; the value is drawn as a bar of it.
    ``colors``: a style per value ("removed": "red"). ``hidden``: only in CSV and JSON (a ± or a
    bar's full amount, say). ``missing``: what the tables show for no value."""

    name: str
    header: str | None = None
    format: str | None = None
    align: Literal["left", "right", "center"] | None = None
    best: Best | None = None
    good: Good | None = None
    spread: str | None = None
    bar: str | None = None
    colors: dict[str, str] = field(default_factory=dict)
    suffix: str = ""
    hidden: bool = False
    missing: str = "-"

    @property
    def title(self) -> str:
        return self.header if self.header is not None else self.name


@dataclass
class Frame:
    """A named table: ``rows`` map column names to plain values (numbers, text, booleans, times,
    None). ``group_by``: columns whose change starts a new section and scopes ``best``."""

    name: str
    title: str
    columns: list[Column]
    rows: list[dict[str, Any]]
    group_by: tuple[str, ...] = ()
    caption: str = ""

    def shown(self) -> list[Column]:
        """The columns the text tables show: not hidden, and not empty in every row (a score no run
        has, a step no method records); CSV and JSON keep every column."""
        return [c for c in self.columns if not c.hidden
                and (not self.rows or any(r.get(c.name) is not None for r in self.rows))]

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)

    def groups(self) -> list[tuple[int, int]]:
        """(start, end) of each run of rows with the same ``group_by`` values."""
        spans, start = [], 0
        for i in range(1, len(self.rows) + 1):
            if i == len(self.rows) or self._group(self.rows[i]) != self._group(self.rows[start]):
                spans.append((start, i))
                start = i
        return spans

    def _group(self, row: dict[str, Any]) -> tuple:
        return tuple(row.get(c) for c in self.group_by)

    def best_rows(self) -> dict[str, set[int]]:
        """Per ``best`` column, the rows holding its best value in their group (groups of two or
        more rows with a value: a lone row is not "best" of anything)."""
        out: dict[str, set[int]] = {}
        for col in self.columns:
            if col.best is None:
                continue
            marked: set[int] = set()
            for start, end in self.groups():
                values = [(i, v) for i in range(start, end) if is_number(v := self.rows[i].get(col.name))]
                if len(values) < 2:
                    continue
                pick = min if col.best == "lower" else max
                target = pick(v for _, v in values)
                marked.update(i for i, v in values if v == target)
            out[col.name] = marked
        return out


def is_number(value: Any) -> bool:
    """A finite int or float (not a boolean): what formats, ``best`` and charts work on."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def plain_value(value: Any) -> Any:
    """A value a database driver returned, as the frames hold values: numbers as int or float
    (PostgreSQL's ``numeric`` arrives as ``Decimal``), intervals in seconds, dates and times as
    ``datetime`` or ISO text, JSON as its text, anything else without a plain form as text."""
    if value is None or isinstance(value, (bool, int, float, str, datetime)):
        return value
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and abs(value) < 2 ** 53 else float(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def check_format(spec: str) -> str | None:
    """Why ``spec`` is not a column format, or None."""
    if spec in NAMED_FORMATS:
        return None
    try:
        format(1.5, spec)
    except (ValueError, TypeError) as exc:
        return f"{spec!r} is not a format ({exc}); use a Python format spec such as '.2f', '+.1%', ',' or " \
               f"one of: {', '.join(NAMED_FORMATS)}"
    return None


def text(value: Any, column: Column) -> str:
    """A value as the tables show it (no styles, no ± and no bar)."""
    if value is None:
        return column.missing
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if column.format == "change" and is_number(value):
        shown = f"{100 * value:+.0f}%" if abs(value) >= 1 else f"{100 * value:+.1f}%"
    elif column.format and is_number(value):
        shown = format(value, column.format)
    elif isinstance(value, float):
        shown = f"{value:.6g}"
    elif isinstance(value, (list, tuple)):
        shown = ", ".join(str(v) for v in value) or "-"
    else:
        shown = str(value)
    return shown + column.suffix


def cell_text(row: dict[str, Any], column: Column, bar_width: int = 0) -> str:
    """The value with its ± figure, and (``bar_width`` > 0) drawn as a bar of its full amount."""
    shown = text(row.get(column.name), column)
    if column.spread and row.get(column.spread) is not None:
        shown += f" ±{text(row[column.spread], replace(column, suffix=''))}"
    if column.bar and bar_width and is_number(row.get(column.name)) and is_number(row.get(column.bar)) and row[column.bar]:
        shown = f"{bar(row[column.name] / row[column.bar], bar_width)} {shown}"
    return shown


def bar(fraction: float, width: int) -> str:
    """A horizontal bar of ``width`` characters, filled to ``fraction`` in eighths."""
    fraction = min(max(fraction, 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (" ▏▎▍▌▋▊▉"[part] if part else "")).ljust(width, "·")


def style_of(row: dict[str, Any], column: Column) -> str:
    """The colour a value takes: from ``colors``, or a change's good or bad side."""
    value = row.get(column.name)
    if column.colors and str(value) in column.colors:
        return column.colors[str(value)]
    if column.good and is_number(value) and value != 0:
        good = value < 0 if column.good == "negative" else value > 0
        return "green" if good else "red"
    return ""


def sort_rows(rows: list[dict[str, Any]], keys: Iterable[str]) -> list[dict[str, Any]]:
    """Rows sorted by ``keys`` (``-name``: descending); missing values last."""
    out = list(rows)
    for key in reversed(list(keys)):
        name, descending = key.removeprefix("-"), key.startswith("-")
        present = [r for r in out if r.get(name) is not None]
        missing = [r for r in out if r.get(name) is None]
        present.sort(key=lambda r: _sortable(r[name]), reverse=descending)
        out = present + missing
    return out


def _sortable(value: Any) -> tuple:
    return (0, value, "") if is_number(value) else (1, 0, str(value))


ParamType = Literal["text", "integer", "number", "boolean", "keys"]


@dataclass(frozen=True)
class Param:
    """A view's parameter (``--param name=value``): ``keys`` is a comma-separated list (of run
    keys or their prefixes)."""

    type: ParamType = "text"
    default: Any = None
    required: bool = False
    help: str = ""
