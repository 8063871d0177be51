"""Shared steps (issue 12): the work several runs of a sweep repeat is planned once, keyed by content,
computed once, kept in the database for later sweeps, and every run that takes it gives exactly the
numbers it gives alone. In-process (``LocalExecutor``) on the tiny checkpoint, with the real database;
on Ray in ``tests/integration/test_shared_steps_ray.py``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from sqlalchemy import select

from twossp.db.models import Run, SharedStepRow
from twossp.db.database import Database
from twossp.plan import plan_shared, plan_sweep
from twossp.runtime.driver import SweepDriver, run_sweep
from twossp.runtime.executors import LocalExecutor
from twossp.spec import parse_sweep

#: every method that shares a step, at two sparsities, and a dense baseline
METHODS = ["dense", {"name": "2ssp", "alpha": 1.5}, {"name": "2ssp", "alpha": 1.0}, "shortgpt", "window",
           "blockpruner"]


def _spec(tiny_checkpoint, name: str, **overrides):
    data = tiny_checkpoint.sweep(name, **{"methods": METHODS, **overrides})
    return parse_sweep(yaml.safe_dump(data), f"{name}.yaml")


def _numbers(db: Database) -> dict[str, tuple]:
    """What a run gives: status, sparsity, scores, masks and the method's removals, by run key."""
    with db.session() as session:
        rows = session.scalars(select(Run)).all()
        details = ("removed_attention_order", "removed_blocks", "removal_order", "scores",
                   "calibration_perplexity_after_each_removal", "budget")
        return {r.key: (r.status, r.achieved_sparsity, r.params_pruned,
                        sorted((s.dataset, s.metric, s.value) for s in r.scores if s.dataset != "speed"),
                        [(m.layer, m.attention_kept, m.ffn_width, bytes(m.ffn_mask)) for m in r.layer_masks],
                        {k: (r.details or {}).get(k) for k in details})
                for r in rows}


def test_the_planner_groups_runs_by_what_their_step_reads(tiny_checkpoint) -> None:
    spec = _spec(tiny_checkpoint, "plan", seeds=[0, 1])
    runs = plan_sweep(spec)
    shared = plan_shared(runs)
    by_kind: dict[str, list] = {}
    for step in shared.steps.values():
        by_kind.setdefault(step.kind, []).append(step)
    # per seed: one stage-1 step for both alphas x both sparsities, one block-states step for
    # ShortGPT and window, one BlockPruner path to the highest sparsity
    assert {kind: len(steps) for kind, steps in by_kind.items()} == {"ffn scores": 2, "block states": 2,
                                                                     "blockpruner path": 2}
    assert all(len(shared.dependents(key)) == 4 for key, step in shared.steps.items()
               if step.kind != "blockpruner path")
    assert [step.params for step in by_kind["blockpruner path"]] == [{"num_calibration": 1, "sparsity": 0.5}] * 2
    dense = [run for run in runs if run.method.name == "dense"]
    assert dense and all(run.key not in shared.needs for run in dense)
    # keyed by content: the same cell in another sweep file has the same step
    again = plan_shared(plan_sweep(_spec(tiny_checkpoint, "other-name", seeds=[0, 1])))
    assert list(again.steps) == list(shared.steps)
    # one run alone shares nothing
    assert plan_shared([r for r in runs if r.method.name == "shortgpt"][:1]).steps == {}


def test_shared_runs_give_the_numbers_they_give_alone_and_a_later_sweep_reuses_the_steps(
        tiny_checkpoint, tmp_path: Path) -> None:
    spec = _spec(tiny_checkpoint, "shared")
    with (Database(f"sqlite:///{tmp_path / 'alone.db'}") as alone,
          Database(f"sqlite:///{tmp_path / 'shared.db'}") as shared):
        unshared_outcome = run_sweep(spec, alone, LocalExecutor(), share=False)
        outcome = run_sweep(spec, shared, LocalExecutor())
        assert not unshared_outcome.failed and not outcome.failed, outcome.failed
        assert unshared_outcome.steps_computed == []
        assert sorted(step.kind for step, _ in outcome.steps_computed) == ["block states", "blockpruner path",
                                                                           "ffn scores"]
        assert _numbers(shared) == _numbers(alone)

        with shared.session() as session:
            rows = session.scalars(select(Run)).all()
            took = {r.method: r.shared_step for r in rows if r.shared_step}
            kept = {row.key: row for row in session.scalars(select(SharedStepRow)).all()}
            assert set(took) == {"2ssp", "shortgpt", "window", "blockpruner"}
            assert set(took.values()) == set(kept)
            for r in rows:
                if r.method == "dense":
                    assert r.shared_step is None and "shared_step" not in (r.details or {})
                else:
                    record = r.details["shared_step"]
                    assert record["reused"] is True and record["from_database"] is False
                    assert kept[r.shared_step].calibration_sha256 == r.calibration_sha256
            # stage 1 is not the 2SSP runs' own work any more: their stage-1 time is the ranking alone
            assert all(row.seconds > 0 for row in kept.values())
        with alone.session() as session:
            assert all(r.shared_step is None for r in session.scalars(select(Run)))

        # A later sweep of the same model and calibration (two more sparsities) takes the kept steps
        # it can; the BlockPruner path now ends at another sparsity, so that one is computed anew.
        later = _spec(tiny_checkpoint, "later", sparsities=[0.375, 0.4])
        outcome = run_sweep(later, shared, LocalExecutor())
        assert not outcome.failed, outcome.failed
        assert sorted(step.kind for step in outcome.steps_reused) == ["block states", "ffn scores"]
        assert [step.kind for step, _ in outcome.steps_computed] == ["blockpruner path"]
        with shared.session() as session:
            new = session.scalars(select(Run).where(Run.target_sparsity == 0.375)).all()
            assert all(r.details["shared_step"]["from_database"] for r in new if r.method in ("2ssp", "shortgpt"))
        run_sweep(later, alone, LocalExecutor(), share=False)
        assert _numbers(shared) == _numbers(alone)


def test_share_false_in_the_sweep_file_computes_everything_in_each_run(tiny_checkpoint, tmp_path: Path) -> None:
    spec = _spec(tiny_checkpoint, "no-share", methods=["2ssp"], runtime={"device": "cpu", "share": False})
    with Database(f"sqlite:///{tmp_path / 'r.db'}") as db:
        outcome = run_sweep(spec, db, LocalExecutor())
        assert len(outcome.completed) == 2 and outcome.steps_computed == []
        with db.session() as session:
            assert session.scalars(select(SharedStepRow)).all() == []
            assert all("stage 1" in {t.phase for t in r.timings} for r in session.scalars(select(Run)))


def test_a_failed_shared_step_fails_its_runs_with_its_error_and_the_sweep_goes_on(
        tiny_checkpoint, tmp_path: Path) -> None:
    """The weights of one model change after the sweep is planned: its shared step fails with the
    error its runs would give alone, each of them fails with it, nothing of it is kept, and the other
    model's runs complete."""
    other = tmp_path / "other-model"
    shutil.copytree(tiny_checkpoint.model_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "note": "another model"}))  # other weights' identity
    data = tiny_checkpoint.sweep("fails", methods=["2ssp"])
    data["models"] = [{"path": str(other), "name": "changed"}, {"path": str(tiny_checkpoint.model_dir)}]
    spec = parse_sweep(yaml.safe_dump(data), "fails.yaml")
    with Database(f"sqlite:///{tmp_path / 'r.db'}") as db:
        driver = SweepDriver(spec, db, LocalExecutor())  # plans: the weights are fingerprinted now
        weights = next(other.glob("*.safetensors"))
        with weights.open("ab") as file:  # a different size: a different fingerprint
            file.write(b"\0" * 8)
        outcome = driver.run()
        failed = {run.model.label: error for run, error in outcome.failed}
        assert len(outcome.failed) == 2 and set(failed) == {"changed"}
        assert len(outcome.completed) == 2 and {r.model.label for r in outcome.completed} == {"tiny-llama"}
        [(step, result)] = [(s, r) for s, r in outcome.steps_computed if r.status == "failed"]
        assert step.model.label == "changed" and "weights of changed changed" in result.error
        for error in failed.values():
            assert error.startswith("SharedStepFailed: the shared step it needs (ffn scores ")
            assert result.error in error
        with db.session() as session:
            assert [row.label for row in session.scalars(select(SharedStepRow))] == [
                s.label for s, r in outcome.steps_computed if r.status == "completed"]
