"""``twossp leaderboard``: for each model and sparsity, methods side by side with their score per
dataset and the change against the dense model; where runs have them, also their mean downstream
accuracy (change in points) and their prefill and decode speed-ups against dense. The view is
declared in a dashboard file; the default one, ``dashboards/leaderboard.yaml``, ships inside the
package (``twossp.dashboards``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from rich import box
from rich.table import Table
from rich.text import Text

from twossp.contracts import DOWNSTREAM_ACC_MEAN, SPEED_DECODE_TOKENS_PER_SECOND, SPEED_PREFILL_SECONDS
from twossp.db.store import BoardCell
from twossp.errors import SpecError, SpecProblem


class Dashboard(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    title: str = "twossp leaderboard"
    metric: str = "perplexity"
    baseline: str = "dense"
    lower_is_better: bool = True


def default_dashboard_path() -> Path:
    return Path(str(resources.files("twossp.dashboards") / "leaderboard.yaml"))


def load_dashboard(path: str | Path | None) -> Dashboard:
    """A dashboard file, validated like a sweep file: ``SpecError`` with every problem and its line."""
    path = Path(path) if path else default_dashboard_path()
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except OSError as exc:
        raise SpecError([SpecProblem(file, None, "", f"cannot read dashboard file: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise SpecError([SpecProblem(file, None, "", "dashboard file is not UTF-8 text")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([SpecProblem(file, mark.line + 1 if mark else None, "", f"invalid YAML: {problem}")]) from None
    except RecursionError:
        raise SpecError([SpecProblem(file, None, "", "the YAML is nested too deeply")]) from None
    if data is None:
        return Dashboard()
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise SpecError([SpecProblem(file, 1, "", "a dashboard file is a YAML mapping (title:, metric:, ...)")])
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
    try:
        return Dashboard.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = str(error["loc"][0]) if error["loc"] else ""
            message = f"unknown key {key!r}" if error["type"] == "extra_forbidden" else error["msg"]
            problems.append(SpecProblem(file, lines.get(key, 1), key, message))
        raise SpecError(problems) from None


def leaderboard_table(cells: list[BoardCell], view: Dashboard) -> Table:
    """``cells`` from ``store.leaderboard_cells`` (scores of ``view.metric``). The accuracy and
    speed-up columns appear only when some cell has those figures."""
    datasets = sorted({d for c in cells for d in c.scores})
    baseline = {(c.model, c.evaluation_key): c for c in cells if c.method == view.baseline}
    summarised = {key for c in cells for key in c.summaries}
    accuracy = DOWNSTREAM_ACC_MEAN in summarised
    speedups = [(name, key) for name, key in (("prefill", SPEED_PREFILL_SECONDS),
                                              ("decode", SPEED_DECODE_TOKENS_PER_SECOND)) if key in summarised]

    caption = (f"{view.metric} per dataset; Δ: change against {view.baseline}; "
               "n: calibration samples; achieved: sparsity counted on the pruned model; several seeds: mean ±sd")
    if accuracy:
        caption += "; acc %: mean downstream accuracy, its Δ in points"
    if speedups:
        caption += f"; {', '.join(name for name, _ in speedups)}: speed-up against {view.baseline}"
    table = Table(title=Text(view.title), box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
                  caption=caption)
    table.add_column("model", no_wrap=True)
    for col in ("target", "method", "achieved", "n"):
        table.add_column(col, justify="left" if col == "method" else "right", no_wrap=True)
    for ds in datasets:
        table.add_column(Text(ds), justify="right", no_wrap=True)
        table.add_column("Δ", justify="right", no_wrap=True)
    if accuracy:
        table.add_column("acc %", justify="right", no_wrap=True)
        table.add_column("Δ", justify="right", no_wrap=True)
    for name, _ in speedups:
        table.add_column(name, justify="right", no_wrap=True)

    def order(c: BoardCell) -> tuple:
        return (c.model, c.target_sparsity, c.method != view.baseline, c.method, c.calibration_samples or 0,
                c.evaluation_key or "")

    previous = None
    for cell in sorted(cells, key=order):
        if previous is not None and previous != (cell.model, cell.target_sparsity):
            table.add_section()
        previous = (cell.model, cell.target_sparsity)
        # the baseline's own row shows its figures but no change against itself
        base = None if cell.method == view.baseline else baseline.get((cell.model, cell.evaluation_key))
        base_scores = base.scores if base else {}
        achieved = "-" if cell.achieved_sparsity is None else f"{cell.achieved_sparsity:.3f}"
        row = [Text(cell.model), f"{cell.target_sparsity:.3g}", Text(cell.method), achieved,
               str(cell.calibration_samples or "-")]
        for ds in datasets:
            if ds not in cell.scores:
                row += ["-", "-"]
                continue
            value, sd, _ = cell.scores[ds]
            row.append(f"{value:.2f}" + (f" ±{sd:.2f}" if sd is not None else ""))
            if ds not in base_scores:
                row.append("")
            else:
                change = (value / base_scores[ds][0] - 1) * 100
                worse = change > 0 if view.lower_is_better else change < 0
                shown = f"{change:+.0f}%" if abs(change) >= 100 else f"{change:+.1f}%"
                row.append(f"[{'red' if worse else 'green'}]{shown}[/]")
        if accuracy:
            row += accuracy_cells(cell, base)
        for name, key in speedups:
            row.append(speedup(cell, base, key))
        table.add_row(*row)
    return table


def accuracy_cells(cell: BoardCell, base: BoardCell | None) -> list[str]:
    """Mean downstream accuracy in percent (±sd over seeds) and its change against ``base`` in
    percentage points: higher is better."""
    if DOWNSTREAM_ACC_MEAN not in cell.summaries:
        return ["-", "-"]
    mean, sd, _ = cell.summaries[DOWNSTREAM_ACC_MEAN]
    shown = f"{100 * mean:.1f}" + (f" ±{100 * sd:.1f}" if sd is not None else "")
    if base is None or DOWNSTREAM_ACC_MEAN not in base.summaries:
        return [shown, ""]
    points = 100 * (mean - base.summaries[DOWNSTREAM_ACC_MEAN][0])
    return [shown, f"[{'red' if points < 0 else 'green'}]{points:+.1f} pt[/]"]


def speedup(cell: BoardCell, base: BoardCell | None, key: tuple[str, str]) -> str:
    """How many times faster than ``base``: a ratio of seconds (prefill) inverted, one of tokens per
    second (decode) as it is; the means over seeds are compared."""
    if base is None:
        return ""
    if key not in cell.summaries or key not in base.summaries:
        return "-"
    mine, theirs = cell.summaries[key][0], base.summaries[key][0]
    if mine <= 0 or theirs <= 0:  # not a measurement (a zero would divide)
        return "-"
    ratio = theirs / mine if key == SPEED_PREFILL_SECONDS else mine / theirs
    return f"{ratio:.2f}x"
