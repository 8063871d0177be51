"""``twossp leaderboard``: for each model and sparsity, methods side by side with their score per
dataset and the change against the dense model. The view is declared in ``dashboards/*.yaml``."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict
from rich import box
from rich.table import Table

from twossp.db.models import Run


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


def _evaluation_identity(run: Run) -> str:
    return json.dumps(run.spec.get("evaluation"), sort_keys=True)


def leaderboard_table(runs: list[Run], view: Dashboard) -> Table:
    datasets = sorted({s.dataset for r in runs for s in r.scores if s.metric == view.metric})
    baseline: dict[tuple[str, str], dict[str, float]] = {}
    cells: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        if run.method == view.baseline:
            baseline[(run.model, _evaluation_identity(run))] = {
                s.dataset: s.value for s in run.scores if s.metric == view.metric}
        cells[(run.model, run.target_sparsity, run.method, run.calibration_samples or 0, _evaluation_identity(run))].append(run)

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

    order = sorted(cells, key=lambda k: (k[0], k[1], k[2] != view.baseline, k[2], k[3]))
    previous = None
    for key in order:
        model, sparsity, method, calib, evaluation = key
        group = cells[key]
        if previous is not None and previous != (model, sparsity):
            table.add_section()
        previous = (model, sparsity)
        base = baseline.get((model, evaluation), {})
        achieved = [r.achieved_sparsity for r in group if r.achieved_sparsity is not None]
        row = [model, f"{sparsity:.3g}", method, f"{statistics.mean(achieved):.3f}" if achieved else "-",
               str(calib or "-")]
        for ds in datasets:
            values = [s.value for r in group for s in r.scores if s.dataset == ds and s.metric == view.metric]
            if not values:
                row += ["-", "-"]
                continue
            value = statistics.mean(values)
            row.append(f"{value:.2f}" + (f" ±{statistics.stdev(values):.2f}" if len(values) > 1 else ""))
            if method == view.baseline or ds not in base:
                row.append("")
            else:
                change = (value / base[ds] - 1) * 100
                worse = change > 0 if view.lower_is_better else change < 0
                shown = f"{change:+.0f}%" if abs(change) >= 100 else f"{change:+.1f}%"
                row.append(f"[{'red' if worse else 'green'}]{shown}[/]")
        table.add_row(*row)
    return table
