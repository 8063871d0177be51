"""Charts of a view's frame: in the terminal with plotext, and as PNG, SVG or PDF figures for
papers with matplotlib. Both draw the same series from the same rows: one panel per y column
(log scale where asked), one series per value of the series column."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twossp.dash.frame import Frame

#: figure files matplotlib writes, by suffix
FIGURE_SUFFIXES = (".png", ".svg", ".pdf")
#: one marker per series, so series stay apart without colours (logs, monochrome print)
_TERMINAL_MARKERS = ("●", "■", "▲", "◆", "+", "x", "*", "o")
_FIGURE_MARKERS = ("o", "s", "^", "D", "P", "X", "*", "v")


@dataclass(frozen=True)
class Chart:
    """``x`` against each of ``y`` (one panel each; ``log``: the panels on a log scale), one line
    per value of ``series`` (all rows one line when None). ``baseline``: the series whose points
    start every other series (the dense model at sparsity 0) instead of being a line of its own."""

    x: str
    y: tuple[str, ...]
    series: str | None = None
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
        series: dict[str, tuple[list[float], list[float]]] = {}
        shared: list[tuple[float, float]] = []
        for row in frame.rows:
            xv, yv = row.get(chart.x), row.get(y)
            if not (_number(xv) and _number(yv)) or (log and yv <= 0):
                continue
            name = str(row.get(chart.series)) if chart.series else frame.title
            if chart.baseline is not None and name == chart.baseline:
                shared.append((float(xv), float(yv)))
                continue
            series.setdefault(name, ([], []))
            series[name][0].append(float(xv))
            series[name][1].append(float(yv))
        if shared and not series:
            series[str(chart.baseline)] = ([p[0] for p in shared], [p[1] for p in shared])
        else:
            for xs, ys in series.values():
                xs += [p[0] for p in shared]
                ys += [p[1] for p in shared]
        for name, (xs, ys) in series.items():
            order = sorted(range(len(xs)), key=xs.__getitem__)
            series[name] = ([xs[i] for i in order], [ys[i] for i in order])
        column = frame.column(y)
        if series:
            out.append(Panel(y, column.title if column else y, log, series))
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
                ax.plot(xs, ys, marker=_FIGURE_MARKERS[number % len(_FIGURE_MARKERS)], label=name)
            if panel.log:
                ax.set_yscale("log")
            ax.set_xlabel(_x_label(frame, chart))
            ax.set_ylabel(panel.label + (" (log scale)" if panel.log else ""))
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small")
        if chart.title or frame.title:
            figure.suptitle(chart.title or frame.title)
        metadata = {".svg": {"Date": None}, ".pdf": {"CreationDate": None}}.get(path.suffix.lower(), {})
        figure.savefig(path, metadata=metadata)
    return path
