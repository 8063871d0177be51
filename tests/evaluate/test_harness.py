"""Downstream tasks through lm-eval: published files converted to the harness's records, the
harness's own task definitions run on the in-memory model, and the same numbers as the ``lm_eval``
command line on the same model folder and converted data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.support.task_files import write_task_files
from twossp.errors import DataUnavailable, SpecError
from twossp.evaluate import harness_data
from twossp.evaluate.harness import evaluate_tasks, prepare_tasks
from twossp.plan import plan_sweep
from twossp.spec import TaskSpec, parse_sweep
from twossp.tasks import TASKS, locate

ALL = [TaskSpec(name=n) for n in ("arc_easy", "arc_challenge", "piqa", "winogrande", "hellaswag")] + \
      [TaskSpec(name="mmlu", subjects=["anatomy", "astronomy"])]


@pytest.fixture(scope="module")
def task_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_task_files(tmp_path_factory.mktemp("task-data"))


@pytest.fixture(scope="module")
def tiny_lm(tiny_checkpoint):
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint.model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_checkpoint.model_dir)


# ---------------------------------------------------------------------------------------------
# Published formats -> the harness's records
# ---------------------------------------------------------------------------------------------


def test_arc_keeps_numeric_answer_keys(task_data: Path) -> None:
    rows = harness_data.arc(str(task_data / "arc_easy" / "ARC-Easy-Test.jsonl"))
    numeric = rows[0]
    assert numeric["choices"]["label"] == ["1", "2", "3", "4"] and numeric["answerKey"] == "1"
    assert rows[1]["choices"]["label"] == ["A", "B", "C", "D"] and rows[1]["answerKey"] == "B"
    assert set(numeric) == {"id", "question", "choices", "answerKey"} and isinstance(numeric["question"], str)


def test_label_files_are_joined_and_typed_like_the_hub(task_data: Path) -> None:
    piqa = harness_data.piqa(str(task_data / "piqa" / "valid.jsonl"), str(task_data / "piqa" / "valid-labels.lst"))
    assert [r["label"] for r in piqa[:3]] == [0, 1, 0]
    wino = harness_data.winogrande(str(task_data / "winogrande" / "dev.jsonl"),
                                   str(task_data / "winogrande" / "dev-labels.lst"))
    assert [r["answer"] for r in wino[:2]] == ["1", "2"]  # the hub keeps WinoGrande's answer a string
    swag = harness_data.hellaswag(str(task_data / "hellaswag" / "hellaswag_val.jsonl"))
    assert [r["label"] for r in swag[:2]] == ["0", "1"]


def test_mmlu_with_and_without_header_and_letter_or_digit_answers(task_data: Path) -> None:
    letters = harness_data.mmlu(str(task_data / "mmlu" / "test" / "anatomy_test.csv"), subject="anatomy")
    digits = harness_data.mmlu(str(task_data / "mmlu" / "test" / "astronomy_test.csv"), subject="astronomy")
    assert len(letters) == len(digits) == 8  # the header row is not a question
    assert [r["answer"] for r in letters[:4]] == [r["answer"] for r in digits[:4]] == [0, 1, 2, 3]
    assert letters[0]["subject"] == "anatomy" and len(letters[0]["choices"]) == 4


@pytest.mark.parametrize("content, expected", [
    ('{"goal": "a", "sol1": "b", "sol2": "c"}\nnot json\n', ":2: not a JSON line"),
    ('{"goal": "a", "sol1": "b"}\n{"goal": "a", "sol1": "b", "sol2": "c"}\n', ":1: no 'sol2' field"),
])
def test_a_malformed_file_names_its_line(tmp_path: Path, content: str, expected: str) -> None:
    records = tmp_path / "valid.jsonl"
    records.write_text(content)
    (tmp_path / "valid-labels.lst").write_text("0\n1\n")
    with pytest.raises(DataUnavailable, match=expected):
        harness_data.piqa(str(records), str(tmp_path / "valid-labels.lst"))


def test_labels_and_records_must_agree(task_data: Path, tmp_path: Path) -> None:
    (tmp_path / "labels.lst").write_text("0\n1\n")
    with pytest.raises(DataUnavailable, match="has 2 labels but .* has 8 records"):
        harness_data.piqa(str(task_data / "piqa" / "valid.jsonl"), str(tmp_path / "labels.lst"))


def test_missing_data_names_the_task_and_every_path_tried(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailable) as info:
        locate(TASKS["piqa"], tmp_path)
    message = str(info.value)
    assert message.startswith("task piqa: no validation data found; tried ")
    assert str(tmp_path / "valid.jsonl") in message and str(tmp_path / "dev-labels.lst") in message


# ---------------------------------------------------------------------------------------------
# Sweep files and run keys
# ---------------------------------------------------------------------------------------------

SWEEP = """name: t
models: [{builtin: smollm2-135m-instruct}]
methods: [dense]
evaluation:
  perplexity: [lee-evaluation]
"""


def test_task_mistakes_are_reported_with_their_lines(task_data: Path, tmp_path: Path) -> None:
    text = SWEEP + f"""  task_data: {task_data}
  tasks:
    - arc_eazy
    - {{name: piqa, subjects: [anatomy]}}
    - {{name: mmlu, subjects: [anatomy, astrology]}}
    - {{name: winogrande, data: {tmp_path}}}
    - winogrande
    - {{name: arc_challenge, num_fewshot: 5}}
"""
    with pytest.raises(SpecError) as info:
        parse_sweep(text)
    messages = [f"{p.line}: {p.message}" for p in info.value.problems]
    assert any(m.startswith("8: unknown task 'arc_eazy' (did you mean 'arc_easy'?)") for m in messages), messages
    assert any(m.startswith("9: `subjects` applies to a task made of subjects") for m in messages), messages
    assert any(m.startswith("10: unknown mmlu subject 'astrology' (did you mean 'astronomy'?)") for m in messages)
    assert any(m.startswith("11: task winogrande: no validation data found; tried") for m in messages), messages
    assert any(m.startswith("12: task winogrande is listed twice") for m in messages), messages
    # few-shot examples come from the training split, which the folder does not have
    assert any(m.startswith("13: task arc_challenge: no train data found") for m in messages), messages


def _key(text: str) -> str:
    return plan_sweep(parse_sweep(text))[0].key


def test_keys_change_with_what_determines_the_numbers_only(task_data: Path, tmp_path: Path) -> None:
    base = SWEEP + f"  task_data: {task_data}\n"
    plain = _key(SWEEP)
    both = _key(base + "  tasks: [arc_easy, piqa]\n")
    assert both != plain  # tasks are evaluated: a new run
    assert _key(base + "  tasks: [piqa, arc_easy]\n") == both  # listing order changes no number
    assert _key(base + "  tasks: [{name: arc_easy, batch_size: 2}, piqa]\n") == both
    assert _key(base + "  tasks: [{name: arc_easy, limit: 3}, piqa]\n") != both
    # a copy of the data elsewhere shares the results; an edited label file does not
    copy = tmp_path / "copy"
    write_task_files(copy)
    assert _key(SWEEP + f"  task_data: {copy}\n  tasks: [arc_easy, piqa]\n") == both
    labels = copy / "piqa" / "valid-labels.lst"
    labels.write_text(labels.read_text().replace("0\n", "1\n", 1))
    assert _key(SWEEP + f"  task_data: {copy}\n  tasks: [arc_easy, piqa]\n") != both
    # the hub's data is another source of numbers than local files
    assert _key(SWEEP + "  tasks: [arc_easy, piqa]\n") != both


# ---------------------------------------------------------------------------------------------
# The harness on the in-memory model
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scores(tiny_lm, task_data: Path, tmp_path_factory: pytest.TempPathFactory):
    model, tokenizer = tiny_lm
    return evaluate_tasks(model, tokenizer, ALL, str(task_data), torch.device("cpu"),
                          tmp_path_factory.mktemp("harness"))


def test_every_task_reports_the_harness_metrics(scores) -> None:
    table = {(t, m): v for t, m, v in scores.scores}
    for task in ("arc_easy", "arc_challenge", "piqa", "hellaswag"):
        assert {(task, "acc"), (task, "acc_stderr"), (task, "acc_norm"), (task, "acc_norm_stderr")} <= set(table)
    assert {("winogrande", "acc"), ("mmlu", "acc"), ("mmlu_anatomy", "acc"), ("mmlu_astronomy", "acc")} <= set(table)
    assert all(0 <= v <= 1 for (t, m), v in table.items() if m in ("acc", "acc_norm"))
    assert scores.details["arc_easy"]["samples"] == 8 and scores.details["arc_challenge"]["samples"] == 4
    assert scores.details["mmlu"]["samples"] == 16


def test_mmlu_aggregate_is_weighted_by_subject_size(scores) -> None:
    table = {(t, m): v for t, m, v in scores.scores}
    assert table["mmlu", "acc"] == pytest.approx((table["mmlu_anatomy", "acc"] + table["mmlu_astronomy", "acc"]) / 2)


def test_mean_accuracy_counts_each_sweep_task_once(scores) -> None:
    table = {(t, m): v for t, m, v in scores.scores}
    top = ["arc_easy", "arc_challenge", "piqa", "winogrande", "hellaswag", "mmlu"]
    assert scores.mean_accuracy == pytest.approx(sum(table[t, "acc"] for t in top) / len(top))


def test_limit_takes_the_first_documents(tiny_lm, task_data: Path, tmp_path: Path) -> None:
    model, tokenizer = tiny_lm
    limited = evaluate_tasks(model, tokenizer, [TaskSpec(name="mmlu", subjects=["anatomy"], limit=3)],
                             str(task_data), torch.device("cpu"), tmp_path)
    assert limited.details["mmlu_anatomy"]["samples"] == 3


def test_same_numbers_as_the_lm_eval_command_line(tiny_checkpoint, scores, task_data: Path,
                                                  tmp_path: Path) -> None:
    """The harness's own CLI on the saved model folder and the configs twossp writes."""
    prepare_tasks(ALL, str(task_data), tmp_path / "configs")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cli = Path(sys.executable).parent / "lm_eval"
    done = subprocess.run([str(cli), "--model", "hf", "--model_args", f"pretrained={tiny_checkpoint.model_dir},"
                           "dtype=float32", "--tasks", ",".join(t.name for t in ALL), "--include_path",
                           str(tmp_path / "configs"), "--device", "cpu", "--batch_size", "8",
                           "--output_path", str(tmp_path / "out")], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [report] = list((tmp_path / "out").rglob("results_*.json"))
    results = json.loads(report.read_text())["results"]
    ours = {(t, m): v for t, m, v in scores.scores}
    compared = 0
    for task, metrics in results.items():
        for key, value in metrics.items():
            if key.endswith(",none") and isinstance(value, float):
                assert ours[task, key.removesuffix(",none")] == pytest.approx(value, abs=1e-12), (task, key)
                compared += 1
    assert compared >= 20
