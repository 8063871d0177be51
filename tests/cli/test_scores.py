"""``twossp runs --scores``: every stored score under its run, so per-task figures are visible
without SQL; without the flag the listing is as it always was."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from tests.support.stored_runs import T0, claim, record, tiny_sweep
from twossp import cli
from twossp.contracts import RunResult, RunStatus
from twossp.db.database import Database
from twossp.plan import plan_sweep

SCORES = [("mmlu_anatomy", "acc", 0.3125), ("arc_easy", "acc_norm", 0.4375), ("arc_easy", "acc", 0.46875),
          ("downstream", "acc_mean", 0.390625), ("speed", "decode_tokens_per_second", 153.25),
          ("eval.txt", "perplexity", 21.5)]


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    """A completed 2SSP run with downstream and speed scores, and a dense run left running."""
    path = tmp_path / "results.db"
    spec = tiny_sweep("scores")
    dense, pruned = plan_sweep(spec)
    with Database(f"sqlite:///{path}") as db:
        assert claim(db, spec, dense, pruned)
        record(db, pruned, RunResult(key=pruned.key, status=RunStatus.COMPLETED, started_at=T0, finished_at=T0,
                                     achieved_sparsity=0.5, scores=SCORES))
    return path


def table_rows(monkeypatch: pytest.MonkeyPatch, *args: str) -> list[list[str]]:
    """The cells of each body row of the ``twossp runs`` table."""
    monkeypatch.setattr(cli, "console", Console(width=300, color_system=None))  # no wrapping
    result = CliRunner().invoke(cli.main, ["runs", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [[cell.strip() for cell in line.strip().strip("│").split("│")]
            for line in result.output.splitlines() if line.startswith("│")]


def test_scores_are_listed_under_their_run(db_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = table_rows(monkeypatch, "--db", str(db_file), "--scores")
    assert [row[2] for row in rows[:2]] == ["dense", "2ssp"]  # the dense run has no scores: nothing under it
    expected = sorted(SCORES)  # by dataset, then metric
    assert rows[2:] == [["", d, m, f"{v:.6g}", "", "", "", ""] for d, m, v in expected]


def test_without_the_flag_no_score_is_listed(db_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = table_rows(monkeypatch, "--db", str(db_file))
    assert [(row[1], row[2], row[5]) for row in rows] == [("tiny", "dense", "running"), ("tiny", "2ssp", "completed")]
