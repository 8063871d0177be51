"""``twossp leaderboard``: for each model and sparsity, methods side by side with their score per
dataset and the change against the dense model. The view is declared in ``dashboards/*.yaml``."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict
from rich import box
from rich.table import Table

from twossp.db.store import BoardCell


class Dashboard(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = "twossp leaderboard"
    metric: str = "perplexity"
    baseline: str = "dense"
    lower_is_better: bool = True


def default_dashboard_path() -> Path:
    return Path(__file__).resolve().parents[2] / "dashboards" / "leaderboard.yaml"


def load_dashboard(path: str | Path | None) -> Dashboard:
    path = Path(path) if path else default_dashboard_path()
    if not path.exists():
        return Dashboard()
    return Dashboard.model_validate(yaml.safe_load(path.read_text()) or {})


def leaderboard_table(cells: list[BoardCell], view: Dashboard) -> Table:
    """``cells`` from ``store.leaderboard_cells`` (scores of ``view.metric``)."""
    datasets = sorted({d for c in cells for d in c.scores})
    baseline = {(c.model, c.evaluation_key): c.scores for c in cells if c.method == view.baseline}

    table = Table(title=view.title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
                  caption=f"{view.metric} per dataset; Δ: change against {view.baseline}; "
                          "n: calibration samples; achieved: sparsity counted on the pruned model; "
                          "several seeds: mean ±sd")
    table.add_column("model", no_wrap=True)
    for col in ("target", "method", "achieved", "n"):
        table.add_column(col, justify="left" if col == "method" else "right", no_wrap=True)
    for ds in datasets:
        table.add_column(ds, justify="right", no_wrap=True)
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
        row = [cell.model, f"{cell.target_sparsity:.3g}", cell.method, achieved, str(cell.calibration_samples or "-")]
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
