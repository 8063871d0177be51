"""Charts of a view's frame: in the terminal with plotext, and as PNG, SVG or PDF figures for
papers with matplotlib. Both draw the same series from the same rows: one panel per y column
(log scale where asked), one series per value of the series column."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from twossp.dash.frame import Frame, is_number
from twossp.errors import ViewError

#: figure files matplotlib writes, by suffix
FIGURE_SUFFIXES = (".png", ".svg", ".pdf")
#: one marker per series, so series stay apart without colours (logs, monochrome print)
_TERMINAL_MARKERS = ("●", "■", "▲", "◆", "+", "x", "*", "o")
_FIGURE_MARKERS = ("o", "s", "^", "D", "P", "X", "*", "v")
_FIGURE_MARKS_PER_LINE = 20


@dataclass(frozen=True)
class Chart:
    """``x`` against each of ``y`` (one panel each; ``log``: the panels on a log scale), one line
    per combination of the ``series`` columns' values (all rows one line when there are none;
    columns whose value is the same in every row are left out of the names). ``baseline``: the
    value of the last series column whose points start each line with the same other values (the
    dense model of each model at sparsity 0) instead of being a line of their own."""

    x: str
    y: tuple[str, ...]
    series: tuple[str, ...] = ()
    log: tuple[str, ...] = ()
    title: str = ""
    baseline: str | None = None


@dataclass(frozen=True)
class Panel:
    y: str
    label: str
    log: bool
    series: dict[str, tuple[list[float], list[float]]]  # label -> (xs, ys), sorted by x


def panels(frame: Frame, chart: Chart) -> list[Panel]:
    """The chart's panels from ``frame``'s rows: points without a number (a missing score; on a
    log panel, a value <= 0) are left out, and a panel with no point at all is not drawn."""
    out = []
    for y in chart.y:
        log = y in chart.log
        lines: dict[tuple[str, ...], list[tuple[float, float]]] = {}
        starts: dict[tuple[str, ...], list[tuple[float, float]]] = {}
        for row in frame.rows:
            xv, yv = row.get(chart.x), row.get(y)
            if not (is_number(xv) and is_number(yv)) or (log and yv <= 0):
                continue
            key = tuple(str(row.get(c)) for c in chart.series)
            if chart.baseline is not None and key and key[-1] == chart.baseline:
                starts.setdefault(key[:-1], []).append((float(xv), float(yv)))
            else:
                lines.setdefault(key, []).append((float(xv), float(yv)))
        if not lines:  # only the baseline: it is the one line
            lines = {(*lead, str(chart.baseline)): points for lead, points in starts.items()}
        else:
            for key, points in lines.items():
                points += starts.get(key[:-1], [])
        names = _names(list(lines), chart.series)
        series = {}
        for key, points in lines.items():
            points.sort()
            name = names[key] or (key[-1] if key and key[-1] != "None" else "") or frame.title or y
            series[name] = ([p[0] for p in points], [p[1] for p in points])
        column = frame.column(y)
        if series:
            out.append(Panel(y, column.title if column else y, log, series))
    return out


def _names(keys: list[tuple[str, ...]], columns: tuple[str, ...]) -> dict[tuple[str, ...], str]:
    """Short names for lines keyed by the values of ``columns``: a column is left out of the names
    when the lines stay apart without it (the last ones are tried first), and so are empty values."""
    shown = list(range(len(columns)))
    for i in reversed(range(len(columns))):
        rest = [j for j in shown if j != i]
        if len({tuple(k[j] for j in rest) for k in keys}) == len(set(keys)):
            shown = rest
    return {k: " ".join(k[j] for j in shown if k[j] not in ("None", "")) for k in keys}


def _x_label(frame: Frame, chart: Chart) -> str:
    column = frame.column(chart.x)
    return column.title if column else chart.x


def terminal(frame: Frame, chart: Chart, width: int, height: int = 18) -> str:
    """The panels one under the other, drawn by plotext at ``width`` columns (ANSI colours)."""
    import plotext as plt

    drawn = []
    for panel in panels(frame, chart):
        plt.clear_figure()
        for number, (name, (xs, ys)) in enumerate(panel.series.items()):
            plt.plot(xs, ys, label=name, marker=_TERMINAL_MARKERS[number % len(_TERMINAL_MARKERS)])
        if panel.log:
            plt.yscale("log")
        plt.title(f"{panel.label}{' (log scale)' if panel.log else ''}")
        plt.xlabel(_x_label(frame, chart))
        plt.limit_size(False, False)  # the size asked for, not shrunk to the terminal plotext finds
        plt.plotsize(width, height)
        plt.theme("clear")
        drawn.append(plt.build())
    plt.clear_figure()
    return "\n".join(drawn)


def write_figure(frame: Frame, chart: Chart, path: str | Path) -> Path:
    """The panels side by side in one matplotlib figure, written as PNG, SVG or PDF by ``path``'s
    suffix. SVG keeps its text as text (series names and axis labels are searchable) and carries
    no date, so the same rows give the same file."""
    import matplotlib
    from matplotlib.figure import Figure

    path = Path(path)
    drawn = panels(frame, chart)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "twossp"}):
        figure = Figure(figsize=(5.2 * max(len(drawn), 1), 4.0), layout="constrained")
        axes = figure.subplots(1, max(len(drawn), 1), squeeze=False)[0]
        for ax, panel in zip(axes, drawn):
            for number, (name, (xs, ys)) in enumerate(panel.series.items()):
                # a long line (a loss curve of every step) keeps about 20 markers: enough to tell it apart
                ax.plot(xs, ys, marker=_FIGURE_MARKERS[number % len(_FIGURE_MARKERS)], label=name,
                        markevery=max(1, len(xs) // _FIGURE_MARKS_PER_LINE))
            if panel.log:
                ax.set_yscale("log")
            ax.set_xlabel(_x_label(frame, chart))
            ax.set_ylabel(panel.label + (" (log scale)" if panel.log else ""))
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small")
        if chart.title or frame.title:
            figure.suptitle(chart.title or frame.title)
        metadata = {".svg": {"Date": None}, ".pdf": {"CreationDate": None}}.get(path.suffix.lower(), {})
        try:
            figure.savefig(path, metadata=metadata)
        except OSError as exc:
            raise ViewError(f"{path}: cannot write the figure: {exc.strerror or exc}") from None
    return path
