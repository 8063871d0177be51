"""The sweep driver end to end on the tiny on-disk checkpoint, in-process (LocalExecutor):
what lands in the database is self-consistent, completed work is never redone, failed work only
when asked, and an interrupted sweep leaves no run stuck in ``running``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
import math
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import yaml
from sqlalchemy import select

from twossp.db import store
from twossp.db.models import Run, Sweep
from twossp.db.database import Database
from twossp.plan import RunSpec, plan_sweep
from twossp.runtime.driver import SweepOutcome, run_sweep, runs_to_do
from twossp.runtime.executors import LocalExecutor
from twossp.contracts import RunResult
from twossp.spec import parse_sweep


T_LONG_AGO = datetime(2026, 1, 1, tzinfo=timezone.utc)


class SpyExecutor:
    """LocalExecutor that remembers which runs it was asked to execute."""

    name = "spy"

    def __init__(self, cannot_place: dict[str, str] | None = None) -> None:
        self.inner = LocalExecutor()
        self.asked: list[list[str]] = []
        self.cannot_place = cannot_place or {}  # run key -> reason, as a cluster without the resources says

    def unplaceable(self, runs):
        return {r.key: self.cannot_place[r.key] for r in runs if r.key in self.cannot_place}

    def execute(self, runs, on_progress, on_retry=None, shared=None):
        runs = list(runs)
        self.asked.append([r.key for r in runs])
        yield from self.inner.execute(runs, on_progress, on_retry, shared)

    def close(self) -> None:
        self.inner.close()


class RecordingDisplay:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def start(self, runs: list[RunSpec], statuses: dict[str, str]) -> None:
        self.events.append(("start", [r.key for r in runs], dict(statuses)))

    def progress(self, key: str, phase: str, done: int, total: int) -> None:
        self.events.append(("progress", key, phase, done, total))

    def finished(self, run: RunSpec, result: RunResult) -> None:
        self.events.append(("finished", run.key, result.status))

    def stop(self) -> None:
        self.events.append(("stop",))


class InterruptAfterFirst(RecordingDisplay):
    """Ctrl-C arriving while the display reports the first finished run."""

    def finished(self, run: RunSpec, result: RunResult) -> None:
        super().finished(run, result)
        raise KeyboardInterrupt


def tiny_spec(tiny_checkpoint, **overrides):
    return parse_sweep(yaml.safe_dump(tiny_checkpoint.sweep("tiny-driver", **overrides)), "tiny-driver.yaml")


def rows_by_key(db: Database) -> dict[str, Run]:
    with db.session() as session:
        rows = session.scalars(select(Run)).all()
        for r in rows:
            _ = r.sweep, r.scores, r.timings, r.layer_masks  # load before the session closes
        return {r.key: r for r in rows}


@pytest.fixture(scope="module")
def swept(tiny_checkpoint, tmp_path_factory) -> Iterator[tuple]:
    """The tiny sweep run once into a fresh database; shared read-only by the checks below."""
    spec = tiny_spec(tiny_checkpoint)
    db_file = tmp_path_factory.mktemp("driver") / "swept.db"
    with Database(f"sqlite:///{db_file}") as db:
        display, executor = RecordingDisplay(), SpyExecutor()
        outcome = run_sweep(spec, db, executor, path="/sweeps/tiny-driver.yaml", display=display)
        yield spec, db, db_file, outcome, display, executor


def dense_counts(config: dict) -> dict[str, int]:
    """Parameter counts of one dense Llama block from its config (docs/method.md, Terms)."""
    d, d_ff = config["hidden_size"], config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = d // heads
    attn = 2 * d * heads * head_dim + 2 * d * kv * head_dim  # q, o + k, v (no biases in Llama)
    mlp = 3 * d * d_ff
    return {"attn": attn, "mlp": mlp, "norm": d, "layer": attn + mlp + 2 * d}


# ------------------------------------------------------------------------------------- outcome


def test_every_run_completes(swept) -> None:
    spec, db, _, outcome, display, executor = swept
    planned = plan_sweep(spec)
    assert isinstance(outcome, SweepOutcome)
    assert [r.key for r in outcome.completed] == [r.key for r in planned]
    assert outcome.failed == [] and outcome.skipped == []
    assert executor.asked == [[r.key for r in planned]]
    assert {r.status for r in rows_by_key(db).values()} == {"completed"}


def test_display_sees_start_progress_finished_stop(swept) -> None:
    spec, _, _, _, display, _ = swept
    keys = [r.key for r in plan_sweep(spec)]
    kinds = [e[0] for e in display.events]
    assert display.events[0] == ("start", keys, {})
    assert kinds[-1] == "stop" and kinds.count("stop") == 1
    assert [e[1:] for e in display.events if e[0] == "finished"] == [(k, "completed") for k in keys]
    phases = {e[2] for e in display.events if e[0] == "progress"}
    assert {"load", "calibration", "eval eval.txt"} <= phases


def test_rows_record_what_produced_them(swept) -> None:
    spec, db, _, _, _, _ = swept
    for run in plan_sweep(spec):
        row = rows_by_key(db)[run.key]
        assert row.sweep.name == "tiny-driver" and row.sweep.path == "/sweeps/tiny-driver.yaml"
        assert row.spec == run.model_dump(mode="json")
        assert row.device == "cpu" and row.host
        assert {"twossp", "torch", "transformers", "python"} <= set(row.versions)
        assert row.started_at <= row.finished_at
        assert [(s.dataset, s.metric) for s in row.scores] == [("eval.txt", "perplexity")]
        assert math.isfinite(row.scores[0].value) and row.scores[0].value > 1
        assert row.details["evaluation_tokens"] == {"eval.txt": 4 * 15}  # 4 windows of 16, 15 targets each
        assert "load" in {t.phase for t in row.timings}
        assert all(t.seconds >= 0 for t in row.timings)


def test_dense_run_keeps_everything(swept, tiny_checkpoint) -> None:
    spec, db, _, _, _, _ = swept
    config = json.loads((tiny_checkpoint.model_dir / "config.json").read_text())
    dense = next(r for r in plan_sweep(spec) if r.method.name == "dense")
    row = rows_by_key(db)[dense.key]
    assert row.achieved_sparsity == 0 and row.params_dense == row.params_pruned
    assert row.params_dense == config["num_hidden_layers"] * dense_counts(config)["layer"]
    assert [(m.layer, m.attention_kept, m.ffn_kept, m.ffn_width) for m in row.layer_masks] == [
        (i, True, 128, 128) for i in range(4)]


@pytest.mark.parametrize("sparsity", [0.25, 0.5])
def test_2ssp_masks_agree_with_budget_and_achieved_sparsity(swept, tiny_checkpoint, sparsity: float) -> None:
    spec, db, _, _, _, _ = swept
    config = json.loads((tiny_checkpoint.model_dir / "config.json").read_text())
    counts = dense_counts(config)
    n_layers, d_ff, d = config["num_hidden_layers"], config["intermediate_size"], config["hidden_size"]
    run = next(r for r in plan_sweep(spec) if r.method.name == "2ssp" and r.sparsity == sparsity)
    row = rows_by_key(db)[run.key]
    budget = row.details["budget"]
    masks = row.layer_masks

    assert [m.layer for m in masks] == list(range(n_layers))
    removed = [m.layer for m in masks if not m.attention_kept]
    assert len(removed) == budget["num_attention_removed"] >= 1
    assert sorted(row.details["removed_attention_order"]) == removed
    for m in masks:
        assert m.ffn_width == d_ff
        assert m.ffn_kept == budget["ffn_keep"] < d_ff
        bits = np.unpackbits(np.frombuffer(m.ffn_mask, dtype=np.uint8), count=m.ffn_width)
        assert int(bits.sum()) == m.ffn_kept

    # Recount from the masks alone: a removed attention takes its input norm with it; a removed
    # FFN neuron is one row of gate and up and one column of down (3 * hidden parameters).
    cut = len(removed) * (counts["attn"] + counts["norm"]) + sum(m.ffn_width - m.ffn_kept for m in masks) * 3 * d
    dense_params = n_layers * counts["layer"]
    assert row.params_dense == dense_params
    assert row.params_pruned == dense_params - cut
    assert row.achieved_sparsity == pytest.approx(cut / dense_params, rel=1e-12)
    assert row.achieved_sparsity == pytest.approx(sparsity, abs=0.01)
    assert len(row.details["calibration_perplexity_after_each_removal"]) == len(removed)


# ------------------------------------------------------------------------------------- what is redone


def test_rerunning_the_sweep_skips_everything(swept) -> None:
    spec, db, _, _, _, _ = swept
    before = {k: (r.finished_at, r.started_at) for k, r in rows_by_key(db).items()}
    display, executor = RecordingDisplay(), SpyExecutor()
    outcome = run_sweep(spec, db, executor, display=display)
    assert executor.asked == [[]]
    assert outcome.completed == [] and outcome.failed == []
    assert [r.key for r in outcome.skipped] == [r.key for r in plan_sweep(spec)]
    assert display.events[0][2] == {k: "completed" for k in before}
    assert {k: (r.finished_at, r.started_at) for k, r in rows_by_key(db).items()} == before


def test_rerun_failed_reruns_only_failed_runs(swept, tmp_path: Path) -> None:
    spec, _, db_file, _, _, _ = swept
    shutil.copy(db_file, tmp_path / "copy.db")
    with Database(f"sqlite:///{tmp_path / 'copy.db'}") as db:
        dense, s25, s50 = plan_sweep(spec)
        with db.session() as session:
            sweep = session.scalar(select(Sweep))
            for run, status in ((s25, "running"), (s50, "failed")):  # running: left by a driver that died
                store.claim(session, sweep.id, run, "dead-driver", rerun_failed=True, stale_before=T_LONG_AGO)
                row = session.scalar(select(Run).where(Run.key == run.key))
                row.status, row.heartbeat_at = status, T_LONG_AGO
        untouched = rows_by_key(db)[dense.key].finished_at

        executor = SpyExecutor()
        outcome = run_sweep(spec, db, executor)
        assert executor.asked == [[s25.key]]  # the stale running one; not the failed one
        assert [r.key for r in outcome.skipped] == [dense.key, s50.key]
        assert rows_by_key(db)[s50.key].status == "failed"

        executor = SpyExecutor()
        outcome = run_sweep(spec, db, executor, rerun_failed=True)
        assert executor.asked == [[s50.key]]
        assert [r.key for r in outcome.completed] == [s50.key]
        rows = rows_by_key(db)
        assert {r.status for r in rows.values()} == {"completed"}
        assert rows[dense.key].finished_at == untouched
        assert len(rows[s50.key].layer_masks) == 4 and len(rows[s50.key].scores) == 1


def test_runs_to_do_semantics(tiny_checkpoint) -> None:
    runs = plan_sweep(tiny_spec(tiny_checkpoint, sparsities=[0.25, 0.5, 0.75], seeds=[0, 1]))
    assert len(runs) == 7
    states = ["completed", "failed", "pending", "running", None, "completed", "failed"]
    statuses = {r.key: s for r, s in zip(runs, states) if s is not None}
    by_state = lambda *wanted: [r.key for r, s in zip(runs, states) if s in wanted]  # noqa: E731

    assert [r.key for r in runs_to_do(runs, statuses, rerun_failed=False)] == by_state("pending", "running", None)
    assert [r.key for r in runs_to_do(runs, statuses, rerun_failed=True)] == by_state(
        "failed", "pending", "running", None)
    assert runs_to_do(runs, {r.key: "completed" for r in runs}, rerun_failed=True) == []
    assert runs_to_do(runs, {}, rerun_failed=False) == runs


# ------------------------------------------------------------------------------------- interruption


def test_interrupt_releases_unfinished_runs(tiny_checkpoint, tmp_path: Path) -> None:
    spec = tiny_spec(tiny_checkpoint)
    with Database(f"sqlite:///{tmp_path / 'interrupted.db'}") as db:
        display, executor = InterruptAfterFirst(), SpyExecutor()
        with pytest.raises(KeyboardInterrupt):
            run_sweep(spec, db, executor, display=display)
        first, *rest = plan_sweep(spec)
        rows = rows_by_key(db)
        assert rows[first.key].status == "completed" and len(rows[first.key].scores) == 1
        assert [rows[r.key].status for r in rest] == ["pending", "pending"]
        assert all(not rows[r.key].scores and not rows[r.key].layer_masks for r in rest)
        assert display.events[-1] == ("stop",)
        assert sum(e[0] == "finished" for e in display.events) == 1  # nothing ran after the interrupt

        executor = SpyExecutor()
        outcome = run_sweep(spec, db, executor)  # the next invocation picks the pending ones up
        assert executor.asked == [[r.key for r in rest]]
        assert [r.key for r in outcome.skipped] == [first.key]
        assert {r.status for r in rows_by_key(db).values()} == {"completed"}


def test_save_to_saves_every_pruned_run_reloadable_to_its_score(tiny_checkpoint, tmp_path: Path) -> None:
    import torch

    from twossp.checkpoint import load_pruned
    from twossp.data.tokens import token_stream
    from twossp.evaluate.perplexity import make_windows, perplexity
    from twossp.families import adapter_for

    sweep_file = tiny_checkpoint.write_sweep(tmp_path / "sweep.yaml", "tiny-save", save_to="saved",
                                             methods=["dense", "2ssp", "shortgpt"], sparsities=[0.5])
    spec = parse_sweep(sweep_file.read_text(), str(sweep_file), base_dir=sweep_file.parent)
    assert spec.save_to.path == str(tmp_path / "saved")  # relative to the sweep file's folder
    plain = tiny_spec(tiny_checkpoint, methods=["dense", "2ssp", "shortgpt"], sparsities=[0.5])
    assert [r.key for r in plan_sweep(spec)] == [r.key for r in plan_sweep(plain)]  # saving changes no key

    with Database(f"sqlite:///{tmp_path / 'save.db'}") as db:
        run_sweep(spec, db, LocalExecutor(), path=str(sweep_file))
        rows = rows_by_key(db)
    saved = sorted(p.name for p in (tmp_path / "saved").iterdir())
    pruned = {k: r for k, r in rows.items() if r.method != "dense"}
    assert saved == sorted(pruned)  # one folder per pruned run, named by its key; none partial
    tokenizer = None
    for key, row in pruned.items():
        assert row.status == "completed" and row.details["saved_to"] == str(tmp_path / "saved" / key)
        assert row.details["saved_stock_checkpoint"] == (row.method == "shortgpt")  # whole blocks: stock
        model = load_pruned(tmp_path / "saved" / key)
        if tokenizer is None:
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(tmp_path / "saved" / key)
        source = spec.evaluation.perplexity[0]
        windows = make_windows(token_stream(tokenizer, source), spec.eval_seq_len, spec.evaluation.max_windows)
        with torch.no_grad():
            ppl = perplexity(model, adapter_for(model.config), windows, torch.device("cpu"))
        stored = next(s.value for s in row.scores if s.metric == "perplexity")
        assert math.isclose(ppl.perplexity, stored, rel_tol=1e-5), (row.method, ppl.perplexity, stored)


def test_a_run_the_budget_cannot_meet_fails_with_its_message_and_the_others_complete(tiny_checkpoint,
                                                                                     tmp_path: Path) -> None:
    spec = tiny_spec(tiny_checkpoint, sparsities=[0.25, 0.999])  # 0.999: more than attention + FFN hold
    with Database(f"sqlite:///{tmp_path / 'budget.db'}") as db:
        outcome = run_sweep(spec, db, LocalExecutor())
        rows = rows_by_key(db)
    impossible = next(r for r in plan_sweep(spec) if r.sparsity == 0.999)
    assert [r.key for r, _ in outcome.failed] == [impossible.key]
    assert rows[impossible.key].status == "failed" and rows[impossible.key].error.startswith("BudgetError: ")
    assert not rows[impossible.key].scores and not rows[impossible.key].layer_masks
    assert {r.status for k, r in rows.items() if k != impossible.key} == {"completed"}


def test_runs_the_executor_cannot_place_fail_first_with_the_reason_and_are_never_executed(tiny_checkpoint,
                                                                                         tmp_path: Path) -> None:
    spec = tiny_spec(tiny_checkpoint)
    planned = plan_sweep(spec)
    unplaceable = {planned[1].key: "a run needs 2 GPU on one node, but ..."}
    display, executor = RecordingDisplay(), SpyExecutor(cannot_place=unplaceable)
    with Database(f"sqlite:///{tmp_path / 'placement.db'}") as db:
        outcome = run_sweep(spec, db, executor, display=display)
        rows = rows_by_key(db)
    assert [(r.key, e) for r, e in outcome.failed] == [(planned[1].key, "ResourcesUnavailable: a run needs 2 GPU on "
                                                                        "one node, but ...")]
    assert display.events[1] == ("finished", planned[1].key, "failed")  # before anything ran
    assert executor.asked == [[r.key for r in planned if r.key != planned[1].key]]
    row = rows[planned[1].key]
    assert row.status == "failed" and row.error.startswith("ResourcesUnavailable") and row.attempts == 1
    assert not row.scores and not row.layer_masks
    assert {r.status for k, r in rows.items() if k != planned[1].key} == {"completed"}
