"""Recovered runs (issue 22), in-process (``LocalExecutor``) on the tiny checkpoint with the real
database: keyed apart from their pruning run, which is computed once and which they start from (its
masks, not a second pruning), stored with their curve, reused by a later sweep, failed with their
pruning run's error, and saved with their recovered weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from sqlalchemy import select

from tests.support.consoles import invoke
from twossp.checkpoint import load_pruned
from twossp.db.database import Database
from twossp.db.models import Run
from twossp.errors import CheckpointError
from twossp.plan import plan_sweep
from twossp.runtime.driver import run_sweep
from twossp.runtime.executors import LocalExecutor
from twossp.runtime.export import export_run
from twossp.spec import parse_sweep

KD = {"name": "kd", "loss": "kd", "steps": 3, "lr": 1e-3, "batch_size": 2, "seq_len": 16}
CE_LORA = {"name": "ce-lora", "loss": "ce", "tune": "lora", "lora": {"rank": 2}, "steps": 2, "lr": 1e-2,
           "batch_size": 2, "seq_len": 16, "eval_every": 1, "eval_windows": 2}


def _spec(tiny_checkpoint, name: str, recovery: list, **overrides):
    data = tiny_checkpoint.sweep(name, **{"methods": ["dense", "2ssp"], "sparsities": [0.5], "recovery": recovery,
                                          **overrides})
    for entry in data["recovery"]:
        if isinstance(entry, dict):
            entry.setdefault("data", {"path": str(tiny_checkpoint.calibration)})
    return parse_sweep(yaml.safe_dump(data), f"{name}.yaml")


def _rows(db: Database) -> dict[str, Run]:
    with db.session() as session:
        rows = session.scalars(select(Run)).all()
        for row in rows:  # loaded while the session is open
            _ = (row.scores, row.timings, row.layer_masks, row.exports, row.recovery)
        return {row.key: row for row in rows}


def test_a_recovered_run_is_keyed_apart_and_starts_from_its_pruning_run(tiny_checkpoint) -> None:
    runs = plan_sweep(_spec(tiny_checkpoint, "plan", [KD, CE_LORA]))  # `none` not listed: planned anyway
    assert [(r.method.name, r.recovery.label if r.recovery else None) for r in runs] == \
        [("dense", None), ("2ssp", None), ("2ssp", "kd"), ("2ssp", "ce-lora")]
    dense, pruning, kd, ce = runs
    assert len({r.key for r in runs}) == 4
    assert kd.pruning_run.key == ce.pruning_run.key == pruning.key
    # the label is not in the key; every setting is
    renamed = plan_sweep(_spec(tiny_checkpoint, "plan", [{**KD, "name": "other"}]))[2]
    assert renamed.key == kd.key
    assert plan_sweep(_spec(tiny_checkpoint, "plan", [{**KD, "lr": 2e-3}]))[2].key != kd.key


def test_recovery_prunes_once_stores_the_curve_and_a_later_sweep_reuses_the_pruning(
        tiny_checkpoint, tmp_path: Path) -> None:
    spec = _spec(tiny_checkpoint, "heal", ["none", KD, CE_LORA], save_to=str(tmp_path / "models"))
    runs = plan_sweep(spec)
    pruning, kd, ce = runs[1:]
    with Database(f"sqlite:///{tmp_path / 'r.db'}") as db:
        outcome = run_sweep(spec, db, LocalExecutor())
        assert not outcome.failed, outcome.failed
        rows = _rows(db)
        assert len(rows) == 4
        before = rows[pruning.key]
        masks = [(m.layer, m.attention_kept, m.ffn_width, bytes(m.ffn_mask)) for m in before.layer_masks]
        for run in (kd, ce):
            row = rows[run.key]
            phases = {t.phase for t in row.timings}
            assert {"rebuild", "recovery"} <= phases and not phases & {"prune", "stage 1", "stage 2"}
            assert row.details["recovered_from"] == pruning.key and row.calibration_sha256 is None
            assert [(m.layer, m.attention_kept, m.ffn_width, bytes(m.ffn_mask)) for m in row.layer_masks] == masks
            assert row.achieved_sparsity == before.achieved_sparsity
            record = row.details["recovery"]
            assert record["steps"] == run.recovery.steps and record["tokens"] == run.recovery.tokens
            assert record["label"] == run.recovery.label and record["trainable_params"] > 0
        assert rows[ce.key].details["recovery"]["trainable_params"] < rows[kd.key].details["recovery"]["trainable_params"]
        with db.session() as session:  # the loss curve, a row per step, as the loop recorded it
            curves = {row.key: [(s.step, s.tokens, s.kd_loss is not None, s.heldout_perplexity is not None)
                                for s in row.recovery_steps] for row in session.scalars(select(Run))}
        assert curves[kd.key] == [(i, i * 2 * 16, True, False) for i in (1, 2, 3)]
        assert curves[ce.key] == [(i, i * 2 * 16, False, True) for i in (1, 2)]
        assert curves[pruning.key] == [] and rows[kd.key].recovery == "kd" and rows[pruning.key].recovery is None
        # ... and shown: in the run view and the curve view
        shown = invoke("show", kd.key[:10], "--db", tmp_path / "r.db")
        assert shown.exit_code == 0 and "recovered from" in shown.output and pruning.key in shown.output
        figure = tmp_path / "curves.svg"
        drawn = invoke("dash", "show", "recovery_curve", "--db", tmp_path / "r.db", "--output", figure)
        assert drawn.exit_code == 0 and figure.stat().st_size > 0
        assert "kd" in drawn.output and "ce-lora" in drawn.output
        ppl = {key: next(s.value for s in row.scores if s.metric == "perplexity") for key, row in rows.items()}
        assert ppl[kd.key] != ppl[pruning.key] and ppl[ce.key] != ppl[pruning.key]

        # The saved recovered model holds the recovered weights: reloaded, it measures what the run stored.
        from twossp.data.tokens import token_stream
        from twossp.evaluate.perplexity import make_windows, perplexity
        from twossp.families import adapter_for
        from twossp.runtime.loading import load_tokenizer

        tokenizer = load_tokenizer(spec.models[0])
        windows = make_windows(token_stream(tokenizer, spec.evaluation.perplexity[0]), 16, 4)
        for run in (pruning, kd, ce):
            folder = Path(rows[run.key].details["saved_to"])
            model = load_pruned(folder)
            measured = perplexity(model, adapter_for(model.config), windows, torch.device("cpu")).perplexity
            assert measured == pytest.approx(ppl[run.key], rel=1e-5)
        card = (Path(rows[kd.key].details["saved_to"]) / "README.md").read_text()
        assert "## How it was recovered" in card and "distillation from the dense model" in card
        assert "## How it was recovered" not in (Path(rows[pruning.key].details["saved_to"]) / "README.md").read_text()

        # twossp export rebuilds from masks: a recovered run's weights are not masks
        with pytest.raises(CheckpointError, match="recovered run: its weights were trained"):
            export_run(db, kd.key, tmp_path / "export")

        # A later sweep with another recovery of the same pruned model prunes nothing
        more = {**KD, "name": "kd-t2", "temperature": 2.0}
        later = run_sweep(_spec(tiny_checkpoint, "later", ["none", more]), db, LocalExecutor())
        assert not later.failed, later.failed
        assert [run.recovery.label for run in later.completed] == ["kd-t2"]
        assert {run.key for run in later.skipped} == {runs[0].key, pruning.key}


def test_a_failed_pruning_run_fails_its_recovered_runs_with_its_error(tiny_checkpoint, tmp_path: Path) -> None:
    """Too few calibration windows for the pruning: it fails, and so does each recovery of it, saying why."""
    spec = _spec(tiny_checkpoint, "fails", ["none", KD],
                 calibration={"source": {"path": str(tiny_checkpoint.calibration)}, "samples": [100_000],
                              "seq_len": 16})
    with Database(f"sqlite:///{tmp_path / 'r.db'}") as db:
        outcome = run_sweep(spec, db, LocalExecutor(), share=False)
        assert [run.method.name for run in outcome.completed] == ["dense"]
        errors = {run.recovery.label if run.recovery else None: error for run, error in outcome.failed}
        assert set(errors) == {None, "kd"}
        assert "DataUnavailable" in errors[None]
        assert "its pruning run" in errors["kd"] and "is failed: DataUnavailable" in errors["kd"]
