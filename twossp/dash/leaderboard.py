"""``twossp leaderboard``: for each model and sparsity, methods side by side with their score per
dataset and the change against the dense model. The view is declared in a dashboard file; the
default one, ``dashboards/leaderboard.yaml``, ships inside the package (``twossp.dashboards``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from rich import box
from rich.table import Table
from rich.text import Text

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
    """``cells`` from ``store.leaderboard_cells`` (scores of ``view.metric``)."""
    datasets = sorted({d for c in cells for d in c.scores})
    baseline = {(c.model, c.evaluation_key): c.scores for c in cells if c.method == view.baseline}

    table = Table(title=Text(view.title), box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
                  caption=f"{view.metric} per dataset; Δ: change against {view.baseline}; "
                          "n: calibration samples; achieved: sparsity counted on the pruned model; "
                          "several seeds: mean ±sd")
    table.add_column("model", no_wrap=True)
    for col in ("target", "method", "achieved", "n"):
        table.add_column(col, justify="left" if col == "method" else "right", no_wrap=True)
    for ds in datasets:
        table.add_column(Text(ds), justify="right", no_wrap=True)
        table.add_column("Δ", justify="right", no_wrap=True)

    def order(c: BoardCell) -> tuple:
        return (c.model, c.target_sparsity, c.method != view.baseline, c.method, c.calibration_samples or 0,
                c.evaluation_key or "")

    previous = None
    for cell in sorted(cells, key=order):
        if previous is not None and previous != (cell.model, cell.target_sparsity):
            table.add_section()
        previous = (cell.model, cell.target_sparsity)
        base = baseline.get((cell.model, cell.evaluation_key), {})
        achieved = "-" if cell.achieved_sparsity is None else f"{cell.achieved_sparsity:.3f}"
        row = [Text(cell.model), f"{cell.target_sparsity:.3g}", Text(cell.method), achieved,
               str(cell.calibration_samples or "-")]
        for ds in datasets:
            if ds not in cell.scores:
                row += ["-", "-"]
                continue
            value, sd, _ = cell.scores[ds]
            row.append(f"{value:.2f}" + (f" ±{sd:.2f}" if sd is not None else ""))
            if cell.method == view.baseline or ds not in base:
                row.append("")
            else:
                change = (value / base[ds][0] - 1) * 100
                worse = change > 0 if view.lower_is_better else change < 0
                shown = f"{change:+.0f}%" if abs(change) >= 100 else f"{change:+.1f}%"
                row.append(f"[{'red' if worse else 'green'}]{shown}[/]")
        table.add_row(*row)
    return table
