"""The views of recovery after pruning, from results of known value recorded through the real store
(no model runs): the leaderboard and the other views keep recovered and unrecovered runs apart; the
view ``recovery`` puts each method's perplexity before and after beside dense's, with the gap closed
in log space; ``recovery_curve`` draws the loss curves in the terminal and as a figure; the run view
says how a run was recovered. On SQLite and PostgreSQL (the ``db`` fixture)."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import Result

from tests.support.consoles import fixed_terminal, invoke
from tests.support.stored_runs import T0, claim, record, tiny_sweep
from twossp.contracts import RecoveryStep, RunResult, RunStatus
from twossp.dash.recovery import gap_closed
from twossp.db.database import Database
from twossp.plan import RunSpec, plan_sweep

RECOVERY = ["none", {"loss": "kd", "steps": 30, "eval_every": 10}, {"loss": "ce", "tune": "lora", "steps": 30}]
#: perplexity on eval.txt and mean downstream accuracy, per (method, recovery label)
FIGURES = {
    ("dense", None): (10.0, 0.60),
    ("2ssp", None): (40.0, 0.40), ("2ssp", "kd-full"): (20.0, 0.50), ("2ssp", "ce-lora-r8"): (25.0, 0.45),
    ("shortgpt", None): (160.0, 0.30), ("shortgpt", "kd-full"): (40.0, 0.45), ("shortgpt", "ce-lora-r8"): (80.0, 0.35),
}
#: the share of the gap closed, worked out by hand: ln(40/20) / ln(40/10) = ln 2 / ln 4, ...
GAP_CLOSED = {("2ssp", "kd-full"): 0.5, ("2ssp", "ce-lora-r8"): math.log(1.6) / math.log(4),
              ("shortgpt", "kd-full"): 0.5, ("shortgpt", "ce-lora-r8"): 0.25}
STEPS = 30


def curve(start: float) -> list[RecoveryStep]:
    """A loss falling as ``start / step``, held-out perplexity at every tenth step, 1024 tokens and
    half a second a step."""
    return [RecoveryStep(step=s, loss=start / s, kd_loss=start / s, ce_loss=start / s + 1, lr=1e-4 * (1 - s / STEPS),
                         grad_norm=1.0, tokens=1024 * s, seconds=0.5 * s,
                         heldout_perplexity=100.0 / s if s % 10 == 0 else None) for s in range(1, STEPS + 1)]


def label(run: RunSpec) -> str | None:
    return run.recovery.label if run.recovery else None


def result(run: RunSpec, pruning: dict[str, RunSpec]) -> RunResult:
    ppl, acc = FIGURES[(run.method.name, label(run))]
    scores = [("eval.txt", "perplexity", ppl), ("downstream", "acc_mean", acc), ("arc_easy", "acc", acc)]
    details: dict[str, Any] = {}
    steps: list[RecoveryStep] = []
    if run.recovery:
        steps = curve(4.0 if run.method.name == "2ssp" else 8.0)
        details["recovery"] = {"from": pruning[run.method.name].key, "label": label(run), "loss": run.recovery.loss,
                               "tune": run.recovery.tune, "steps": STEPS, "tokens": 1024 * STEPS,
                               "seconds": 0.5 * STEPS, "tokens_per_second": 2048.0,
                               "trainable_params": 1000 if run.recovery.tune == "full" else 50, "total_params": 1000,
                               "best_step": 30 if run.recovery.eval_every else None,
                               "heldout_perplexity_before": 120.0, "data_sha256": "d" * 8}
    return RunResult(key=run.key, status=RunStatus.COMPLETED, started_at=T0, finished_at=T0,
                     achieved_sparsity=run.sparsity or 0.0, scores=scores, details=details, recovery=steps)


def record_sweep(db: Database, name: str = "healing") -> list[RunSpec]:
    spec = tiny_sweep(name, methods=["dense", "2ssp", "shortgpt"], recovery=RECOVERY)
    runs = plan_sweep(spec)
    assert claim(db, spec, *runs)
    pruning = {r.method.name: r for r in runs if r.recovery is None}
    for run in runs:
        record(db, run, result(run, pruning))
    return runs


@pytest.fixture(autouse=True, scope="module")
def terminal() -> Iterator[None]:
    with fixed_terminal(200):
        yield


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def frames(db: Database, *args: object) -> dict[str, list[dict[str, Any]]]:
    return json.loads(ok(invoke("dash", "show", *args, "--db", db.url, "--format", "json")))["frames"]


def words(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------------------------ gap closed
def test_gap_closed_is_the_share_of_the_log_perplexity_won_back() -> None:
    assert gap_closed(10.0, 40.0, 20.0) == pytest.approx(0.5)
    assert gap_closed(10.0, 40.0, 10.0) == pytest.approx(1.0)   # back at dense
    assert gap_closed(10.0, 40.0, 40.0) == pytest.approx(0.0)   # no better than pruned
    assert gap_closed(10.0, 40.0, 80.0) == pytest.approx(-0.5)  # worse
    assert gap_closed(10.0, 10.0, 9.0) is None                  # pruning lost nothing: no gap
    assert gap_closed(None, 40.0, 20.0) is None and gap_closed(10.0, 40.0, 0.0) is None


# ------------------------------------------------------------------------------------ the recovery view
def test_the_recovery_view_puts_before_and_after_beside_dense(db: Database) -> None:
    record_sweep(db)
    rows = frames(db, "recovery")["recovery"]
    assert [(r["recovery"], r["method"]) for r in rows] == [("ce-lora-r8", "2ssp"), ("ce-lora-r8", "shortgpt"),
                                                            ("kd-full", "2ssp"), ("kd-full", "shortgpt")]
    for row in rows:
        cell = (row["method"], row["recovery"])
        assert (row["model"], row["target"], row["dataset"], row["runs"]) == ("tiny", 0.5, "eval.txt", 1)
        assert (row["dense"], row["before"], row["after"]) == (10.0, FIGURES[(row["method"], None)][0],
                                                               FIGURES[cell][0])
        assert row["gap closed"] == pytest.approx(GAP_CLOSED[cell], rel=1e-12)
        assert (row["acc dense"], row["acc before"], row["acc after"]) == (
            0.60, FIGURES[(row["method"], None)][1], FIGURES[cell][1])
        assert (row["tokens"], row["seconds"]) == (1024 * STEPS, 0.5 * STEPS)
        assert row["trainable"] == (1.0 if row["recovery"] == "kd-full" else 0.05)


def test_the_recovery_table_marks_the_best_method_of_each_recovery(db: Database) -> None:
    record_sweep(db)
    out = ok(invoke("dash", "show", "recovery", "--db", db.url, "--format", "markdown"))
    lines = {tuple(c.strip() for c in line.strip("|").split("|")[3:5]): line for line in out.splitlines()
             if line.startswith("| tiny")}
    # the best of its recovery's section: before, after, gap closed, accuracy before and after
    assert lines[("kd-full", "2ssp")].count("**") == 2 * 5 and "| 30,720 | 15.0 | 100.0% |" in lines[("kd-full", "2ssp")]
    assert "**" not in lines[("kd-full", "shortgpt")].split("| 50% |")[0]  # worse before and after
    assert "| **34%** |" in lines[("ce-lora-r8", "2ssp")] and "| 25% |" in lines[("ce-lora-r8", "shortgpt")]
    assert "gap closed: (ln before - ln after) / (ln before - ln dense)" in words(out)


def test_the_recovery_view_finds_the_before_of_a_run_from_another_sweep(db: Database) -> None:
    """A later sweep that adds recovery to an earlier one's pruning starts from the runs that one
    stored (the same keys, not run again): filtered to the later sweep, the view finds their before
    and dense figures in the earlier one."""
    first = tiny_sweep("first", methods=["dense", "2ssp", "shortgpt"])
    runs = plan_sweep(first)
    assert claim(db, first, *runs)
    for run in runs:
        record(db, run, result(run, {}))
    second = tiny_sweep("second", methods=["dense", "2ssp", "shortgpt"], recovery=RECOVERY)
    recovered = [r for r in plan_sweep(second) if r.recovery]
    assert claim(db, second, *recovered)
    for run in recovered:
        record(db, run, result(run, {r.method.name: r for r in runs}))
    rows = frames(db, "recovery", "--param", "sweep=second")["recovery"]
    assert [(r["method"], r["recovery"], r["dense"], r["before"], r["after"]) for r in rows] == [
        (m, label, 10.0, FIGURES[(m, None)][0], FIGURES[(m, label)][0])
        for label in ("ce-lora-r8", "kd-full") for m in ("2ssp", "shortgpt")]
    assert frames(db, "recovery", "--param", "sweep=first")["recovery"] == []  # it recovered nothing


# ------------------------------------------------------------------------------------ kept apart elsewhere
def test_the_leaderboard_gives_each_recovery_its_own_section(db: Database) -> None:
    record_sweep(db)
    rows = frames(db, "leaderboard")["leaderboard"]
    assert [(r["method"], r["recovery"], r["eval.txt"], r["runs"]) for r in rows] == [
        ("dense", "none", 10.0, 1),
        ("2ssp", "none", 40.0, 1), ("shortgpt", "none", 160.0, 1),
        ("2ssp", "ce-lora-r8", 25.0, 1), ("shortgpt", "ce-lora-r8", 80.0, 1),
        ("2ssp", "kd-full", 20.0, 1), ("shortgpt", "kd-full", 40.0, 1)]
    by = {(r["method"], r["recovery"]): r for r in rows}
    assert by[("2ssp", "kd-full")]["eval.txt change"] == pytest.approx(1.0)  # against dense, as for the others
    assert by[("shortgpt", "kd-full")]["acc change"] == pytest.approx(-15.0)
    table = ok(invoke("leaderboard", "--db", db.url))
    header = next(line for line in table.splitlines() if "method" in line)
    assert header.split()[:4] == ["model", "target", "method", "recovery"]
    assert "recovery: how the pruned model was healed (none: as pruned), a section each" in words(table)


def test_the_other_views_keep_recovered_runs_apart(db: Database) -> None:
    record_sweep(db)
    tradeoff = frames(db, "tradeoff")["tradeoff"]
    assert [(r["method"], r["perplexity"], r["runs"]) for r in tradeoff] == [
        ("2ssp", 40.0, 1), ("2ssp + ce-lora-r8", 25.0, 1), ("2ssp + kd-full", 20.0, 1), ("dense", 10.0, 1),
        ("shortgpt", 160.0, 1), ("shortgpt + ce-lora-r8", 80.0, 1), ("shortgpt + kd-full", 40.0, 1)]
    tasks = frames(db, "tasks")["tasks"]
    assert {(r["method"], r["acc"]) for r in tasks if r["target"] == 0.5} == {
        (f"{m} + {label}" if label else m, acc) for (m, label), (_, acc) in FIGURES.items() if m != "dense"}
    ablation = frames(db, "ablation")["ablation"]  # calibration sizes of the pruned models as they are
    assert {(r["method"], r["mean"]) for r in ablation} == {("2ssp", 40.0), ("shortgpt", 160.0)}
    status = frames(db, "status", "--param", "limit=0")["runs"]
    assert sorted(r["recovery"] for r in status) == ["ce-lora-r8"] * 2 + ["kd-full"] * 2 + ["none"] * 3


def test_compare_names_the_recovery_of_each_run(db: Database) -> None:
    runs = record_sweep(db)
    chosen = [r for r in runs if r.method.name == "2ssp" and label(r) in (None, "kd-full")]
    rows = frames(db, "compare", "--param", "runs=" + ",".join(r.key for r in chosen))["runs"]
    fields = [r["field"] for r in rows]
    assert fields[fields.index("target") + 1] == "recovery"
    assert [rows[fields.index("recovery")][r.key] for r in chosen] == [label(r) or "none" for r in chosen]


# ------------------------------------------------------------------------------------ loss curves
def test_the_curve_view_averages_the_loss_between_its_rows(db: Database) -> None:
    runs = record_sweep(db)
    shown = frames(db, "recovery_curve", "--param", "points=4")
    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in shown["curve"]:
        by_run.setdefault(row["key"], []).append(row)
    recovered = {r.key: r for r in runs if r.recovery}
    assert set(by_run) == set(recovered)
    for key, rows in by_run.items():
        start = 4.0 if recovered[key].method.name == "2ssp" else 8.0
        # 4 evenly spaced steps (1, 11, 20, 30) and the held-out evaluations (10, 20, 30)
        assert [r["step"] for r in rows] == [1, 10, 11, 20, 30]
        assert [r["steps"] for r in rows] == [1, 9, 1, 9, 10]
        for row, first in zip(rows, [1, 2, 11, 12, 21]):
            mean = sum(start / s for s in range(first, row["step"] + 1)) / row["steps"]
            assert row["loss"] == pytest.approx(mean, rel=1e-12)
            assert row["tokens"] == 1024 * row["step"] and row["lr"] == pytest.approx(1e-4 * (1 - row["step"] / 30))
        assert [r["heldout ppl"] for r in rows] == [None, 10.0, None, 5.0, 100.0 / 30]
    summary = {r["key"]: r for r in shown["runs"]}
    for key, run in recovered.items():
        start = 4.0 if run.method.name == "2ssp" else 8.0
        assert (summary[key]["steps"], summary[key]["first loss"], summary[key]["last loss"]) == (30, start, start / 30)
        assert (summary[key]["best heldout ppl"], summary[key]["best step"]) == (100.0 / 30, 30)
    every = frames(db, "recovery_curve", "--param", "points=0")["curve"]
    assert len(every) == 4 * STEPS


def test_the_curve_view_draws_in_the_terminal_and_writes_a_figure(db: Database, tmp_path: Path) -> None:
    runs = record_sweep(db)
    figure = tmp_path / "loss.svg"
    out = ok(invoke("dash", "show", "recovery_curve", "--db", db.url, "--output", figure))
    assert "loss (log scale)" in out and "held-out ppl (log scale)" in out  # both panels, by plotext
    assert f"wrote {figure}" in words(out)
    texts = {"".join(node.itertext()).strip() for node in ET.parse(figure).iter("{http://www.w3.org/2000/svg}text")}
    assert {"2ssp ce-lora-r8", "2ssp kd-full", "shortgpt ce-lora-r8", "shortgpt kd-full"} <= texts  # a line per run
    assert {"step", "loss (log scale)", "held-out ppl (log scale)", "recovery: loss curves"} <= texts

    (one,) = [r for r in runs if r.method.name == "shortgpt" and label(r) == "kd-full"]
    single = frames(db, "recovery_curve", "--param", f"key={one.key[:10]}")
    assert {r["key"] for r in single["curve"]} == {one.key} and len(single["curve"]) == 20 + 1  # 20 spaced, 1 eval
    (pruning,) = [r for r in runs if r.method.name == "shortgpt" and r.recovery is None]
    refused = invoke("dash", "show", "recovery_curve", "--db", db.url, "--param", f"key={pruning.key}")
    assert refused.exit_code == 2 and "was not recovered after pruning" in refused.output


# ------------------------------------------------------------------------------------ one run
def test_the_run_view_says_how_a_run_was_recovered(db: Database) -> None:
    runs = record_sweep(db)
    (run,) = [r for r in runs if r.method.name == "2ssp" and label(r) == "ce-lora-r8"]
    (pruning,) = [r for r in runs if r.method.name == "2ssp" and r.recovery is None]
    shown = frames(db, "run", "--param", f"key={run.key}")
    fields = {r["field"]: r["value"] for r in shown["recovery"]}
    assert fields["recovery"] == "ce-lora-r8" and fields["recovered from"] == pruning.key
    assert fields["loss"] == "ce" and fields["tune"] == "lora r=8 alpha=16.0" and fields["steps"] == 30
    assert fields["trainable parameters"] == "50 of 1,000 (5.00%)" and fields["recovery.data_sha256"] == "dddddddd"
    assert "recovery.from" not in fields and not any(r["field"].startswith("recovery.") for r in shown["details"])
    assert {r["field"]: r["value"] for r in shown["run"]}["recovery"] == "ce-lora-r8"
    # 8 evenly spaced steps of 30, and the 3 held-out evaluations
    assert [r["step"] for r in shown["recovery_curve"]] == [1, 5, 9, 10, 13, 18, 20, 22, 26, 30]
    table = ok(invoke("show", run.key, "--db", db.url))
    assert "loss curve (30 steps)" in table and f"twossp dash show recovery_curve --param key={run.key}" in words(table)

    plain = frames(db, "run", "--param", f"key={pruning.key}")
    assert "recovery" not in plain and "recovery_curve" not in plain
    assert "recovery" not in {r["field"] for r in plain["run"]}
