"""Sweep files: what parses, and how every mistake is reported (file, line, readable path, message).

Each file in ``tests/bad_sweeps/`` describes its own expected problems in leading comments::

    # expect: line N: <substring of the message>

so this module and the CLI test of ``twossp sweep validate`` share one list of mistakes.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from twossp.errors import SpecError, SpecProblem, TwosspError
from twossp.spec import (
    CalibrationSpec,
    DenseMethod,
    EvaluationSpec,
    FileSource,
    RuntimeSpec,
    SweepSpec,
    TwoSSPMethod,
    load_sweep,
    parse_sweep,
)

BAD_SWEEPS_DIR = Path(__file__).parent / "bad_sweeps"
BAD_SWEEPS = sorted(BAD_SWEEPS_DIR.glob("*.yaml"))
_EXPECT = re.compile(r"^# expect: line (\d+): (.+)$")

MINIMAL = """\
name: minimal
models:
  - hub: HuggingFaceTB/SmolLM2-135M
methods:
  - dense
"""


def expected_problems(path: Path) -> list[tuple[int, str]]:
    """The ``# expect: line N: text`` comments at the top of a bad sweep file, in order."""
    expectations = []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _EXPECT.match(line)
        if not match:
            break
        expectations.append((int(match[1]), match[2].strip()))
    return expectations


def problems_of(path: Path) -> list[SpecProblem]:
    with pytest.raises(SpecError) as info:
        load_sweep(path)
    return info.value.problems


def assert_reports(path: Path) -> None:
    """``load_sweep`` reports exactly the expected problems of ``path``, each at its line."""
    expected = expected_problems(path)
    assert expected, f"{path.name} must start with '# expect: line N: <message>'"
    problems = problems_of(path)
    for problem in problems:
        assert problem.file == str(path)
        assert problem.line is not None, problem
    for line, text in expected:
        assert any(p.line == line and text in p.message for p in problems), (
            f"{path.name}: expected line {line}: {text!r}; got:\n" + "\n".join(map(str, problems))
        )
    assert len(problems) == len(expected), "unexpected extra problems:\n" + "\n".join(map(str, problems))


# --------------------------------------------------------------------------------------------
# Malformed files
# --------------------------------------------------------------------------------------------


def test_bad_sweeps_folder_is_populated() -> None:
    assert len(BAD_SWEEPS) >= 20


@pytest.mark.parametrize("path", BAD_SWEEPS, ids=[p.name for p in BAD_SWEEPS])
def test_bad_sweep_reports_expected_problems(path: Path) -> None:
    assert_reports(path)


def test_expect_comments_are_parsed() -> None:
    assert expected_problems(BAD_SWEEPS_DIR / "source-file-bad-keys.yaml") == [
        (11, "unknown key 'file'"),
        (11, "missing required key 'path'"),
    ]


def test_several_independent_problems_are_reported_at_once() -> None:
    path = BAD_SWEEPS_DIR / "several-problems.yaml"
    problems = problems_of(path)
    assert [(p.line, p.where) for p in problems] == [
        (10, "models[0].colour"),
        (13, "methods[0].alpha"),
        (14, "methods[1]"),
        (17, "sparsities[1]"),
        (20, "calibration.seq_len"),
        (22, ""),  # duplicate YAML key, found before validation
    ]
    rendered = str(SpecError(problems))
    assert f"{path}:13: methods[0].alpha: Input should be greater than 0" in rendered.splitlines()


def test_problems_are_sorted_by_line() -> None:
    problems = problems_of(BAD_SWEEPS_DIR / "several-problems.yaml")
    assert [p.line for p in problems] == sorted(p.line for p in problems)


@pytest.mark.parametrize(
    ("text", "line", "where"),
    [
        (MINIMAL + "  - name: 2ssp\n    alpha: -2\nsparsities: [0.5]\n", 7, "methods[1].alpha"),
        (MINIMAL + "calibration:\n  seq_len: 4\n", 7, "calibration.seq_len"),
        (MINIMAL + "calibration:\n  samples: [8, 0]\n", 7, "calibration.samples[1]"),
        (MINIMAL + "evaluation:\n  perplexity:\n    - c4\n    - {path: a.jsonl, format: csv}\n",
         9, "evaluation.perplexity[1].format"),
        (MINIMAL + "calibration:\n  source:\n    text_field: body\n", 7, "calibration.source.path"),
        (MINIMAL + "runtime:\n  dtype: float64\n", 7, "runtime.dtype"),
        (MINIMAL + "seeds: [0, -1]\n", 6, "seeds[1]"),
        # a user's own key that looks like a union tag stays in the path
        (MINIMAL + "  - name: 2ssp\n    dense: true\nsparsities: [0.5]\n", 7, "methods[1].dense"),
        (MINIMAL + "calibration:\n  strategy: random\n", 7, "calibration.strategy"),
        (MINIMAL + "models_extra: 1\n", 6, "models_extra"),
    ],
)
def test_where_is_a_readable_path_and_line_is_the_entry(text: str, line: int, where: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_sweep(text, "s.yaml")
    [problem] = info.value.problems
    assert (problem.file, problem.line, problem.where) == ("s.yaml", line, where)


def test_text_source_mistake_is_reported_once_against_the_right_branch() -> None:
    # a mapping is a file source: no "Input should be a valid string" noise from the str branch
    with pytest.raises(SpecError) as info:
        parse_sweep(MINIMAL + "evaluation:\n  perplexity: [{path: a.jsonl, max_documents: 0}]\n")
    assert [p.message for p in info.value.problems] == ["Input should be greater than or equal to 1"]
    assert info.value.problems[0].where == "evaluation.perplexity[0].max_documents"


def test_unknown_source_lists_the_named_ones() -> None:
    with pytest.raises(SpecError) as info:
        parse_sweep(MINIMAL + "evaluation:\n  perplexity: [wikitext]\n")
    [problem] = info.value.problems
    assert "unknown text source 'wikitext'" in problem.message
    assert "wikitext2" in problem.message and "lee-evaluation" in problem.message


def test_same_entry_problems_on_one_line_are_all_kept() -> None:
    with pytest.raises(SpecError) as info:
        parse_sweep(MINIMAL + "  - 2ssp\nsparsities: [half, quarter]\n")
    assert [p.where for p in info.value.problems] == ["sparsities[0]", "sparsities[1]"]


def test_missing_file_is_a_spec_error_without_line(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_sweep(tmp_path / "nope.yaml")
    [problem] = info.value.problems
    assert problem.line is None and "cannot read sweep file" in problem.message
    assert isinstance(info.value, TwosspError)


def test_non_utf8_file_is_a_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SpecError, match="not UTF-8"):
        load_sweep(path)


# --------------------------------------------------------------------------------------------
# Valid files
# --------------------------------------------------------------------------------------------


def test_minimal_sweep_parses_with_defaults() -> None:
    spec = parse_sweep(MINIMAL)
    assert spec.name == "minimal" and spec.description == ""
    [model] = spec.models
    assert model.hub == "HuggingFaceTB/SmolLM2-135M" and model.label == "HuggingFaceTB/SmolLM2-135M"
    assert (model.revision, model.gpus, model.cpus, model.trust_remote_code) == (None, 0, 1, False)
    assert spec.methods == [DenseMethod()]
    assert spec.sparsities == [] and spec.seeds == [0]
    assert spec.calibration == CalibrationSpec(source="c4-train", samples=[32], seq_len=2048)
    assert spec.evaluation == EvaluationSpec(perplexity=["wikitext2"], seq_len=None, max_windows=None)
    assert spec.eval_seq_len == 2048
    assert spec.runtime == RuntimeSpec(device="auto", dtype="float32", threads=None)


def test_method_shorthand_and_full_form_agree() -> None:
    spec = parse_sweep(MINIMAL + "  - 2ssp\nsparsities: [0.25, 0.5]\n")
    assert spec.methods == [DenseMethod(), TwoSSPMethod(alpha=1.5, num_calibration_second_stage=1)]
    full = parse_sweep(MINIMAL.replace("  - dense\n", "  - name: dense\n  - name: 2ssp\n") + "sparsities: [0.25, 0.5]\n")
    assert full.methods == spec.methods


def test_2ssp_parameters() -> None:
    spec = parse_sweep(
        MINIMAL + "  - name: 2ssp\n    alpha: 2.5\n    num_calibration_second_stage: 4\n"
        "sparsities: [0.5]\ncalibration:\n  samples: [4, 16]\n"
    )
    assert spec.methods[1] == TwoSSPMethod(alpha=2.5, num_calibration_second_stage=4)


def test_file_sources() -> None:
    spec = parse_sweep(
        MINIMAL + "  - 2ssp\nsparsities: [0.5]\n"
        "calibration:\n  source: {path: data/train.jsonl, text_field: body}\n"
        "evaluation:\n  perplexity:\n    - wikitext2\n    - {path: data/held-out.txt, max_documents: 10}\n"
    )
    calib = spec.calibration.source
    assert isinstance(calib, FileSource)
    assert (calib.path, calib.text_field, calib.resolved_format, calib.label) == (
        "data/train.jsonl", "body", "jsonl", "train.jsonl")
    named, held_out = spec.evaluation.perplexity
    assert named == "wikitext2"
    assert isinstance(held_out, FileSource)
    assert (held_out.resolved_format, held_out.max_documents) == ("text", 10)


@pytest.mark.parametrize("source", ["wikitext2", "c4", "c4-train", "fineweb-edu", "lee-calibration"])
def test_named_calibration_sources(source: str) -> None:
    spec = parse_sweep(MINIMAL + f"  - 2ssp\nsparsities: [0.5]\ncalibration:\n  source: {source}\n"
                       "evaluation:\n  perplexity: [lee-evaluation]\n")
    assert spec.calibration.source == source


def test_other_model_sources() -> None:
    spec = parse_sweep(
        "name: sources\nmodels:\n"
        "  - {hub: org/model, revision: v2, name: pinned}\n"
        "  - {path: /models/local}\n"
        "  - {gguf: /models/model.gguf}\n"
        "  - {builtin: smollm2-135m-instruct, gpus: 0.5, cpus: 2}\n"
        "methods: [dense]\n"
    )
    assert [m.label for m in spec.models] == ["pinned", "local", "model.gguf", "smollm2-135m-instruct"]


def test_calibration_may_equal_evaluation_when_nothing_is_pruned() -> None:
    spec = parse_sweep(MINIMAL + "calibration:\n  source: wikitext2\n")
    assert spec.calibration.source == "wikitext2"


def test_load_sweep_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("# twossp sweep validate ok.yaml\n" + MINIMAL, encoding="utf-8")
    assert load_sweep(path) == parse_sweep(MINIMAL)


def test_spec_is_frozen() -> None:
    spec = parse_sweep(MINIMAL)
    with pytest.raises(Exception):
        spec.name = "other"  # type: ignore[misc]
    assert isinstance(spec, SweepSpec)


def test_importing_spec_and_plan_does_not_import_torch() -> None:
    code = "import sys, twossp.spec, twossp.plan; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_relative_paths_are_relative_to_the_sweep_file(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "sweeps"
    folder.mkdir()
    sweep = folder / "local.yaml"
    sweep.write_text(
        "name: local\n"
        "models:\n  - path: ../models/tiny\n  - gguf: m.gguf\n  - path: /abs/model\n"
        "methods: [dense, 2ssp]\nsparsities: [0.5]\n"
        "calibration:\n  source: {path: data/calib.jsonl}\n  samples: [1]\n  seq_len: 16\n"
        "evaluation:\n  perplexity: [{path: data/eval.txt}, lee-evaluation]\n"
    )
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    spec = load_sweep("sweeps/local.yaml")
    assert spec.models[0].path == str(folder.resolve() / "../models/tiny")
    assert spec.models[1].gguf == str(folder.resolve() / "m.gguf")
    assert spec.models[2].path == "/abs/model"
    assert spec.calibration.source.path == str(folder.resolve() / "data/calib.jsonl")
    assert spec.evaluation.perplexity[0].path == str(folder.resolve() / "data/eval.txt")
    assert spec.evaluation.perplexity[1] == "lee-evaluation"

    from twossp.plan import plan_sweep

    keys = [r.key for r in plan_sweep(spec)]
    monkeypatch.chdir(folder)
    assert [r.key for r in plan_sweep(load_sweep("local.yaml"))] == keys


def test_type_errors_and_cross_section_problems_are_reported_in_the_same_round() -> None:
    text = (
        "name: both\n"
        "models:\n"
        "  - hub: org/model\n"
        "  - hub: org/model\n"          # line 4: duplicate of models[0]
        "methods: [dense, 2ssp, 2ssp]\n"  # line 5: duplicate method
        "sparsities: [0.5, 0.5]\n"      # line 6: duplicate value
        "calibration: {samples: [4], seq_len: short}\n"  # line 7: wrong type
    )
    with pytest.raises(SpecError) as info:
        parse_sweep(text, "both.yaml")
    found = {(p.line, p.message) for p in info.value.problems}
    messages = " | ".join(p.message for p in info.value.problems)
    assert any(line == 7 and "valid integer" in msg for line, msg in found), messages
    assert any(line == 4 and "duplicate model" in msg for line, msg in found), messages
    assert any(line == 5 and "duplicate method" in msg for line, msg in found), messages
    assert any(line == 6 and "duplicate value 0.5" in msg for line, msg in found), messages
