"""Views at their edges: sweeps that share cells, values PostgreSQL returns as Decimal, dates and
intervals, charts of several models, user views that restyle a built-in query, list parameters,
figures that cannot be written. On SQLite and PostgreSQL where a database is involved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.consoles import fixed_terminal, invoke
from tests.support.stored_runs import OWNER, T0, record, tiny_sweep
from twossp.contracts import RunResult, RunStatus
from twossp.dash.charts import Chart, panels
from twossp.dash.frame import Column, Frame
from twossp.db import store
from twossp.db.database import Database
from twossp.plan import plan_sweep


@pytest.fixture(autouse=True, scope="module")
def terminal() -> Iterator[None]:
    with fixed_terminal(160):
        yield


def run_sweep_rows(db: Database, name: str, complete: int | None = None) -> list:
    """Sweep ``name`` (dense + 2SSP 0.25 and 0.5 on the tiny paths) stored as a driver stores it:
    its planned keys, then its first ``complete`` runs claimed and completed (all by default)."""
    spec = tiny_sweep(name, sparsities=[0.25, 0.5])
    runs = plan_sweep(spec)
    with db.session() as session:
        sweep = store.upsert_sweep(session, spec, None, [r.key for r in runs])
        for run in runs[:complete]:
            store.claim(session, sweep.id, run, OWNER, rerun_failed=False, stale_before=T0)
    for run in runs[:complete]:
        record(db, run, RunResult(key=run.key, status=RunStatus.COMPLETED, started_at=T0, finished_at=T0,
                                  achieved_sparsity=run.sparsity or 0.0,
                                  scores=[("eval.txt", "perplexity", 10.0 + 10 * (run.sparsity or 0))]))
    return runs


def states(db: Database, sweep: str) -> dict[str, int]:
    out = invoke("dash", "show", "status", "--db", db.url, "--param", f"sweep={sweep}", "--format", "json")
    assert out.exit_code == 0, out.output
    return {r["state"]: r["runs"] for r in json.loads(out.output)["frames"]["states"]}


def test_a_sweep_whose_cells_another_sweep_computed_is_complete(db: Database) -> None:
    first = run_sweep_rows(db, "first")
    second = run_sweep_rows(db, "second", complete=0)  # same cells: its driver finds them done
    assert [r.key for r in first] == [r.key for r in second]
    assert states(db, "first") == {"completed": 3, "total": 3}
    assert states(db, "second") == {"completed": 3, "total": 3}


def test_a_sweep_part_way_counts_what_has_not_started(db: Database) -> None:
    run_sweep_rows(db, "partial", complete=1)
    assert states(db, "partial") == {"completed": 1, "not started": 2, "total": 3}
    listed = json.loads(invoke("dash", "show", "status", "--db", db.url, "--format", "json").output)
    assert len(listed["frames"]["runs"]) == 1  # the sweep run last is the default


def test_a_negative_limit_is_refused(db: Database) -> None:
    run_sweep_rows(db, "limits")
    result = invoke("dash", "show", "status", "--db", db.url, "--param", "limit=-1")
    assert result.exit_code == 2 and "limit=-1" in result.output and "Traceback" not in result.output


def test_sql_values_of_every_kind_print_in_every_format(db: Database) -> None:
    run_sweep_rows(db, "kinds")
    query = ("select avg(attempts) as mean_attempts, sum(target_sparsity) as total, min(finished_at) as first, "
             "count(seed) > 0 as seeded, count(*) as n from runs")
    for output_format in ("json", "csv", "markdown", "latex", "table"):
        result = invoke("db", "sql", query, "--db", db.url, "--format", output_format)
        assert result.exit_code == 0 and "Traceback" not in result.output, (output_format, result.output)
    row = json.loads(invoke("db", "sql", query, "--db", db.url, "--format", "json").output)["frames"]["sql"][0]
    assert row["mean_attempts"] == 1 and row["total"] == 0.75 and row["n"] == 3  # Decimal on PostgreSQL
    assert row["first"].startswith("2026-01-02")
    if db.engine.dialect.name == "postgresql":  # an interval, a date and JSON
        extra = json.loads(invoke("db", "sql", "select finished_at - started_at as took, "
                                  "current_date as today, spec -> 'method' as method from runs limit 1",
                                  "--db", db.url, "--format", "json").output)["frames"]["sql"][0]
        assert extra["took"] == 0.0 and len(extra["today"]) == 10 and json.loads(extra["method"])["name"]


def test_a_list_parameter_binds_as_its_items(db: Database, tmp_path: Path) -> None:
    runs = run_sweep_rows(db, "lists")
    (tmp_path / "some.yaml").write_text(
        "title: some runs\nparams:\n  runs: {type: keys, required: true}\n"
        "sql: select method, target_sparsity from runs where key in :runs order by target_sparsity\n")
    result = invoke("dash", "show", "some", "--db", db.url, "--format", "csv",
                    "--param", f"runs={runs[0].key},{runs[2].key}", env={"TWOSSP_DASHBOARDS": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["method,target_sparsity", "dense,0.0", "2ssp,0.5"]


def test_a_user_view_restyles_a_built_in_query(db: Database, tmp_path: Path) -> None:
    run_sweep_rows(db, "restyled")
    (tmp_path / "status.yaml").write_text(
        "title: my status\nquery: sweep_status\nparams:\n  limit: {default: 1, help: fewer}\n"
        "columns:\n  - {name: state, header: STATE}\n")
    env = {"TWOSSP_DASHBOARDS": str(tmp_path)}
    shown = invoke("dash", "show", "status", "--db", db.url, "--param", "limit=2", env=env)
    assert shown.exit_code == 0, shown.output  # the built-in's type (integer) stays
    assert "STATE" in shown.output and "1 earlier completed run(s) not listed" in " ".join(shown.output.split())
    (tmp_path / "status.yaml").write_text(
        "title: my status\nquery: sweep_status\nparams:\n  limit: {type: text}\n  key: {}\n"
        "columns:\n  - {name: stat}\n")
    flat = " ".join(invoke("dash", "show", "status", "--db", db.url, env=env).output.split())
    assert "takes 'limit' as integer, not text" in flat
    assert "takes no parameter 'key'" in flat
    assert "the built-in query 'sweep_status' has no column 'stat'" in flat


def test_sql_parameters_are_found_as_the_database_binds_them(tmp_path: Path) -> None:
    view = tmp_path / "colons.yaml"
    view.write_text("title: colons\nsql: select ':x' as a from runs\n")
    flat = " ".join(invoke("dash", "show", view).output.split())
    assert "the SQL uses :x, which params: does not declare" in flat  # text() binds it even inside quotes


@pytest.mark.parametrize("lists", ["sort: [1, run]", "group_by: [run, 2]", "chart: {x: run, y: [ppl, 3], log: [4]}"])
def test_an_invalid_item_in_a_list_of_columns_is_one_message(tmp_path: Path, lists: str) -> None:
    view = tmp_path / "items.yaml"
    view.write_text(f"title: items\nsql: select key as run, 1.0 as ppl from runs\n{lists}\n")
    shown = invoke("dash", "show", view)
    assert shown.exit_code != 0 and "Traceback" not in shown.output and "internal error" not in shown.output
    assert "items.yaml:3" in shown.output, shown.output


def test_a_figure_that_cannot_be_written_is_one_message(db: Database, tmp_path: Path) -> None:
    run_sweep_rows(db, "figures")
    result = invoke("dash", "show", "tradeoff", "--db", db.url, "--output", tmp_path / "no" / "such" / "f.png")
    assert result.exit_code == 2 and "cannot write a figure there" in result.output
    assert "Traceback" not in result.output
    live = invoke("dash", "show", "status", "--db", db.url, "--live", "--output", tmp_path / "f.png")
    assert live.exit_code == 2 and "--live" in live.output


def test_each_model_has_its_own_lines_from_its_own_dense_run() -> None:
    rows = [{"model": m, "method": meth, "x": x, "y": y} for m, meth, x, y in [
        ("a", "dense", 0.0, 10.0), ("a", "2ssp", 0.5, 20.0), ("a", "window", 0.5, 40.0),
        ("b", "dense", 0.0, 5.0), ("b", "2ssp", 0.5, 8.0)]]
    frame = Frame("f", "t", [Column("model"), Column("method"), Column("x"), Column("y")], rows)
    (panel,) = panels(frame, Chart("x", ("y",), ("model", "method"), baseline="dense"))
    assert panel.series == {"a 2ssp": ([0.0, 0.5], [10.0, 20.0]), "a window": ([0.0, 0.5], [10.0, 40.0]),
                            "b 2ssp": ([0.0, 0.5], [5.0, 8.0])}
    one_model = Frame("f", "t", frame.columns, [r for r in rows if r["model"] == "a"])
    (panel,) = panels(one_model, Chart("x", ("y",), ("model", "method"), baseline="dense"))
    assert set(panel.series) == {"2ssp", "window"}  # the model named only when there are several
    only_dense = Frame("f", "t", frame.columns, [rows[0]])
    (panel,) = panels(only_dense, Chart("x", ("y",), ("model", "method"), baseline="dense"))
    assert panel.series == {"dense": ([0.0], [10.0])}


def test_the_status_view_shows_the_error_of_a_failed_run(db: Database) -> None:
    spec = tiny_sweep("failing")
    runs = plan_sweep(spec)
    with db.session() as session:
        sweep = store.upsert_sweep(session, spec, None, [r.key for r in runs])
        for run in runs:
            store.claim(session, sweep.id, run, OWNER, rerun_failed=False, stale_before=T0)
    record(db, runs[1], RunResult(key=runs[1].key, status=RunStatus.FAILED, started_at=T0, finished_at=T0,
                                  error="Traceback (most recent call last):\n  ...\nBudgetError: 0.99 is too much"))
    out = invoke("dash", "show", "status", "--db", db.url)
    assert out.exit_code == 0, out.output
    failed = next(line for line in out.output.splitlines() if runs[1].key in line)
    assert "failed" in failed and "BudgetError: 0.99 is too much" in failed and "Traceback" not in out.output
    running = next(line for line in out.output.splitlines() if runs[0].key in line)
    assert "running" in running  # claimed, with a heartbeat, not finished
    assert states(db, "failing") == {"failed": 1, "running": 1, "total": 2}
