"""A view's frames as text: a terminal table (rich), CSV, JSON, Markdown or LaTeX. The table and
Markdown show what a reader wants (formats, ± figures, bars, best in bold, changes coloured); CSV
and JSON carry every column's plain value, so what they print is what the database holds."""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime
from typing import Any, Callable

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from twossp.dash.frame import Column, Frame, cell_text, is_number, plain_value, style_of

FORMATS = ("table", "csv", "json", "markdown", "latex")
BAR_WIDTH = 12


def table(frame: Frame) -> Table:
    """A rich table: sections per group, the best of each group bold, changes and states coloured."""
    out = Table(title=Text(frame.title) if frame.title else None, caption=frame.caption or None,
                box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    columns = frame.shown()
    for col in columns:
        out.add_column(Text(col.title), justify=_align(frame, col),
                       no_wrap=col.name not in ("error", "output", "prompt", "value"))
    best = frame.best_rows()
    spans = frame.groups() if frame.group_by else [(0, len(frame.rows))]
    for number, (start, end) in enumerate(spans):
        if number:
            out.add_section()
        for i in range(start, end):
            row = frame.rows[i]
            cells = []
            for col in columns:
                style = style_of(row, col)
                if i in best.get(col.name, ()):
                    style = f"bold {style}".strip()
                cells.append(Text(cell_text(row, col, BAR_WIDTH), style=style))
            out.add_row(*cells)
    return out


def tables(frames: list[Frame]) -> RenderableType:
    return Group(*[table(f) for f in frames])


def plain(value: Any) -> Any:
    """A value as JSON holds it: times in ISO 8601, non-finite numbers as null, lists as lists,
    anything else as ``frame.plain_value`` makes it."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return plain_value(value)


def as_json(frames: list[Frame], view: str, params: dict[str, Any]) -> str:
    """``{"view", "params", "frames": {name: [row, ...]}}``, every column with its plain value."""
    body = {"view": view, "params": {k: plain(v) for k, v in params.items()},
            "frames": {f.name: [{c.name: plain(r.get(c.name)) for c in f.columns} for r in f.rows] for f in frames}}
    return json.dumps(body, indent=2, ensure_ascii=False)


def as_csv(frames: list[Frame]) -> str:
    """One CSV table per frame, every column with its plain value; several frames are each headed
    by a ``# frame: NAME`` line and separated by a blank line."""
    out = io.StringIO()
    for number, frame in enumerate(frames):
        if len(frames) > 1:
            out.write(("\n" if number else "") + f"# frame: {frame.name}\n")
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([c.name for c in frame.columns])
        for row in frame.rows:
            writer.writerow(["" if (v := plain(row.get(c.name))) is None else v for c in frame.columns])
    return out.getvalue()


def _text_rows(frame: Frame, mark_best: Callable[[str], str], escape: Callable[[str], str],
               bar_width: int) -> list[list[str]]:
    best = frame.best_rows()
    rows = []
    for i, row in enumerate(frame.rows):
        cells = []
        for col in frame.shown():
            shown = escape(cell_text(row, col, bar_width))
            cells.append(mark_best(shown) if i in best.get(col.name, ()) else shown)
        rows.append(cells)
    return rows


def _md(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def as_markdown(frames: list[Frame]) -> str:
    """GitHub-flavoured Markdown tables, the best of each group in bold."""
    parts = []
    for frame in frames:
        columns = frame.shown()
        lines = [f"**{_md(frame.title)}**", ""] if frame.title else []
        lines.append("| " + " | ".join(_md(c.title) for c in columns) + " |")
        lines.append("|" + "|".join("---:" if _align(frame, c) == "right" else "---" for c in columns) + "|")
        lines += ["| " + " | ".join(cells) + " |" for cells in _text_rows(frame, lambda s: f"**{s}**", _md, BAR_WIDTH)]
        if frame.caption:
            lines += ["", _md(frame.caption)]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _align(frame: Frame, column: Column) -> str:
    """The column's own alignment, else right for numbers and left for the rest."""
    return column.align or ("right" if any(is_number(r.get(column.name)) for r in frame.rows) else "left")


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$"}


def _tex(value: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in value.replace("\n", " "))


def as_latex(frames: list[Frame]) -> str:
    """One ``table`` with a booktabs ``tabular`` per frame (``\\usepackage{booktabs}``), the best
    of each group in bold, groups separated by ``\\midrule``."""
    parts = []
    for frame in frames:
        columns = frame.shown()
        rows = _text_rows(frame, lambda s: rf"\textbf{{{s}}}", _tex, 0)
        align = "".join({"right": "r", "center": "c"}.get(_align(frame, c), "l") for c in columns)
        lines = [r"\begin{table}", r"\centering", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
                 " & ".join(_tex(c.title) for c in columns) + r" \\", r"\midrule"]
        starts = {start for start, _ in frame.groups()} if frame.group_by else set()
        for i, cells in enumerate(rows):
            if i and i in starts:
                lines.append(r"\midrule")
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        if frame.title:
            lines.append(rf"\caption{{{_tex(frame.title)}}}")
        lines.append(r"\end{table}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def formatted(frames: list[Frame], output_format: str, view: str, params: dict[str, Any]) -> str:
    """Frames as CSV, JSON, Markdown or LaTeX text (the table is printed by rich instead)."""
    if output_format == "json":
        return as_json(frames, view, params)
    return {"csv": as_csv, "markdown": as_markdown, "latex": as_latex}[output_format](frames)
