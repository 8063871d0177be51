"""A whole run through the worker with each placement (``runtime.placement``) on the tiny local
checkpoint: the same removals, masks and scores as on one device; the placement and the peak memory
of every phase recorded, with the plan's estimate; the saved model whole."""

from __future__ import annotations

import pytest
import yaml

from tests.support.task_files import write_task_files
from twossp.contracts import RunStatus
from twossp.plan import plan_sweep
from twossp.runtime.worker import execute_run
from twossp.spec import parse_sweep


@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
    return write_task_files(tmp_path_factory.mktemp("task-data"))


def _runs(tiny_checkpoint, task_data, placement: str, **extra):
    data = tiny_checkpoint.sweep("placed", methods=["2ssp"], sparsities=[0.5],
                                 runtime={"device": "cpu", "dtype": "float32", "placement": placement}, **extra)
    data["evaluation"].update({"speed": {"prompt_tokens": 4, "new_tokens": 3, "warmup": 0, "repeats": 1},
                               "generate": {"prompts": ["the river"], "max_new_tokens": 4},
                               "tasks": [{"name": "arc_easy", "limit": 4}], "task_data": str(task_data)})
    return plan_sweep(parse_sweep(yaml.safe_dump(data), "placed.yaml", check_files=False))


@pytest.fixture(scope="module")
def single(tiny_checkpoint, task_data):
    result = execute_run(_runs(tiny_checkpoint, task_data, "single")[0])
    assert result.status == RunStatus.COMPLETED, result.error
    return result


@pytest.mark.parametrize("placement", ["split", "stream"])
def test_a_placed_run_stores_what_the_single_run_stores(tiny_checkpoint, task_data, single, placement) -> None:
    run = _runs(tiny_checkpoint, task_data, placement)[0]
    assert run.key == _runs(tiny_checkpoint, task_data, "single")[0].key  # where blocks live changes no number
    result = execute_run(run)
    assert result.status == RunStatus.COMPLETED, result.error
    assert result.masks == single.masks
    assert result.details["removed_attention_order"] == single.details["removed_attention_order"]
    quality = {(d, m): v for d, m, v in result.scores if d != "speed"}
    assert quality == pytest.approx({(d, m): v for d, m, v in single.scores if d != "speed"}, rel=1e-6)
    assert result.generations == single.generations
    assert any(dataset == "arc_easy" for dataset, _, _ in result.scores)  # lm-eval ran on the placed model
    assert result.placement == ("stream from disk" if placement == "stream" else "split 1x cpu")


def test_every_phase_has_its_peak_and_the_plan_its_estimate(single) -> None:
    assert single.placement == "single"
    phases = [phase for phase, *_ in single.memory]
    for phase in ("plan", "load", "calibration", "stage 1", "stage 2", "speed", "generate", "tasks"):
        assert phase in phases, phases
    assert any(phase.startswith("eval ") for phase in phases)
    assert all(device == "cpu" and size > 0 for _, device, _, size in single.memory)
    assert [metric for phase, _, metric, _ in single.memory if phase == "plan"] == ["estimate_bytes"]


def test_a_streamed_run_saves_a_whole_model(tiny_checkpoint, task_data, tmp_path) -> None:
    from twossp.checkpoint import load_pruned

    run = _runs(tiny_checkpoint, task_data, "stream", save_to=str(tmp_path))[0]
    result = execute_run(run)
    assert result.status == RunStatus.COMPLETED, result.error
    model = load_pruned(result.details["saved_to"])
    assert not any(p.is_meta for p in model.parameters())
