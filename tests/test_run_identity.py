"""Run identity: a run's key is computed once, from what was frozen when the sweep was planned, and
the keys of the shipped sweeps never change (results stored by earlier versions stay theirs)."""

from __future__ import annotations

from pathlib import Path

import yaml
from sqlalchemy import select

from twossp.db.database import Database
from twossp.db.models import Run
from twossp.plan import RunSpec, StepSpec, plan_shared, plan_sweep
from twossp.runtime.driver import run_sweep
from twossp.runtime.executors import LocalExecutor
from twossp.spec import load_sweep, parse_sweep

REPO = Path(__file__).resolve().parents[1]

#: sweeps/quickstart.yaml as planned since its results were first stored: (run label, key, evaluation key).
QUICKSTART_KEYS = [
    ("smollm2-135m-instruct dense", "3b268b8e67df8cb1", "24ee13e4f3408cf4"),
    ("smollm2-135m-instruct 2ssp s=0.25 n=16 seed=0", "6daad05835de8818", "24ee13e4f3408cf4"),
    ("smollm2-135m-instruct 2ssp s=0.375 n=16 seed=0", "b43f72ee6ae5ad38", "24ee13e4f3408cf4"),
    ("smollm2-135m-instruct 2ssp s=0.5 n=16 seed=0", "c63a2c3a48aab5b4", "24ee13e4f3408cf4"),
    ("smollm2-135m-instruct shortgpt s=0.25 n=16 seed=0", "c79a0538135b4301", "24ee13e4f3408cf4"),
    ("smollm2-135m-instruct shortgpt s=0.375 n=16 seed=0", "c63893d271cae716", "24ee13e4f3408cf4"),
    ("smollm2-135m-instruct shortgpt s=0.5 n=16 seed=0", "cf86ec87b9ca45ad", "24ee13e4f3408cf4"),
    ("smollm2-135m-instruct window s=0.25 n=16 seed=0", "be2966ef9a668392", "24ee13e4f3408cf4"),
    ("smollm2-135m-instruct window s=0.375 n=16 seed=0", "f2cd3efcd55414c9", "24ee13e4f3408cf4"),
    ("smollm2-135m-instruct window s=0.5 n=16 seed=0", "971e6457e83b5ada", "24ee13e4f3408cf4"),
]
#: its shared steps: the 2SSP runs' stage-1 scores, the ShortGPT and window runs' block states
QUICKSTART_STEPS = ["b8cabae1c1bc2d56", "b9e4b9f2491f7a46"]


def test_the_quickstart_keys_never_change() -> None:
    runs = plan_sweep(load_sweep(REPO / "sweeps" / "quickstart.yaml"))
    assert [(run.label, run.key, run.evaluation_key) for run in runs] == QUICKSTART_KEYS
    assert sorted(plan_shared(runs).steps) == QUICKSTART_STEPS


def test_the_key_is_computed_once(tiny_checkpoint, monkeypatch) -> None:
    run = plan_sweep(parse_sweep(yaml.safe_dump(tiny_checkpoint.sweep()), "tiny.yaml"))[1]
    key = run.key
    monkeypatch.setattr(RunSpec, "identity", lambda self: {"changed": True})
    assert run.key == key  # not recomputed
    assert run.model_copy().key != key  # a copy is keyed by its own content


def test_a_copy_with_other_content_has_its_own_key(tiny_checkpoint) -> None:
    runs = plan_sweep(parse_sweep(yaml.safe_dump(tiny_checkpoint.sweep()), "tiny.yaml"))
    low, high = runs[1], runs[2]
    assert low.key != high.key
    assert low.model_copy(update={"sparsity": high.sparsity}).key == high.key
    step = next(iter(plan_shared(runs).steps.values()))
    assert isinstance(step, StepSpec)
    assert step.model_copy(update={"params": {"other": 1}}).key != step.key


def test_runs_and_shared_steps_share_their_base_not_their_fields() -> None:
    assert RunSpec.weights_changed is StepSpec.weights_changed
    assert "sparsity" not in StepSpec.model_fields and "kind" not in RunSpec.model_fields


def test_a_prompts_file_unreadable_when_planned_is_keyed_as_it_is_and_read_by_the_run(tiny_checkpoint,
                                                                                    tmp_path) -> None:
    data = tiny_checkpoint.sweep("absent-prompts", methods=["dense"])
    del data["sparsities"]
    data["evaluation"]["generate"] = {"file": str(tmp_path / "absent.txt")}
    run = plan_sweep(parse_sweep(yaml.safe_dump(data), "absent-prompts.yaml", check_files=False))[0]
    assert run.prompts is not None and run.prompts.texts is None
    assert run.identity()["evaluation"]["generate"]["file"] == f"missing:{tmp_path / 'absent.txt'}"
    (tmp_path / "absent.txt").write_text("Found later\n", encoding="utf-8")
    assert run.generation_prompts() == ["Found later"]


def test_editing_the_prompts_file_while_a_sweep_runs_changes_neither_key_nor_prompts(tiny_checkpoint,
                                                                                      tmp_path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The old teacher\nA green river\n", encoding="utf-8")
    data = tiny_checkpoint.sweep("frozen-prompts", methods=["dense"])
    del data["sparsities"]
    data["evaluation"]["generate"] = {"file": str(prompts), "max_new_tokens": 2}
    spec = parse_sweep(yaml.safe_dump(data), "frozen-prompts.yaml")
    planned = plan_sweep(spec)

    class EditsThePromptsFirst(LocalExecutor):
        """The prompts file is edited after the sweep was planned, before its runs execute."""

        def execute(self, runs, on_progress, on_retry=None, shared=None):
            prompts.write_text("Something else entirely\n", encoding="utf-8")
            yield from super().execute(runs, on_progress, on_retry, shared)

    with Database(f"sqlite:///{tmp_path / 'runs.db'}") as db:
        outcome = run_sweep(spec, db, EditsThePromptsFirst(), path=str(tmp_path / "frozen-prompts.yaml"))
        assert [run.key for run in outcome.completed] == [run.key for run in planned] and not outcome.failed
        with db.session() as session:
            row = session.scalars(select(Run)).one()
            assert row.key == planned[0].key
            assert [g.prompt for g in row.generations] == ["The old teacher", "A green river"]
    # planned again now, the edited file is another run
    assert plan_sweep(spec)[0].key != planned[0].key
