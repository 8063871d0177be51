"""Sweep files: what parses, and how every mistake is reported (file, line, readable path, message).

Each file in ``tests/bad_sweeps/`` describes its own expected problems in leading comments::

    # expect: line N: <substring of the message>

so this module and the CLI test of ``twossp sweep validate`` share one list of mistakes.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import time
import tracemalloc
import types
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
import yaml
from pydantic import ByteSize

from twossp.errors import SpecError, SpecProblem, TwosspError
from twossp.methods import MAX_INT, METHODS, DenseMethod, TwoSSPMethod
from twossp.spec import (
    MAX_DEPTH,
    MAX_NODES,
    CalibrationSpec,
    EvaluationSpec,
    FileSource,
    ModelSpec,
    RuntimeSpec,
    SweepSpec,
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
        "evaluation:\n  perplexity:\n    - wikitext2\n    - {path: data/held-out.txt, max_documents: 10}\n",
        check_files=False,  # the shapes of file sources; that files exist is checked below
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
        "methods: [dense]\n",
        check_files=False,
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
    for name in ("sweeps/data", "models/tiny", "abs/model"):
        (tmp_path / name).mkdir(parents=True)
    for name in ("models/tiny/config.json", "abs/model/config.json", "sweeps/m.gguf", "sweeps/data/calib.jsonl",
                 "sweeps/data/eval.txt"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "abs/model/config.json").write_text('{"other": 1}')  # other weights than models/tiny
    absolute = tmp_path / "abs" / "model"
    sweep = folder / "local.yaml"
    sweep.write_text(
        "name: local\n"
        f"models:\n  - path: ../models/tiny\n  - gguf: m.gguf\n  - path: {absolute}\n"
        "methods: [dense, 2ssp]\nsparsities: [0.5]\n"
        "calibration:\n  source: {path: data/calib.jsonl}\n  samples: [1]\n  seq_len: 16\n"
        "evaluation:\n  perplexity: [{path: data/eval.txt}, lee-evaluation]\n"
    )
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    spec = load_sweep("sweeps/local.yaml")
    assert spec.models[0].path == str(folder.resolve() / "../models/tiny")
    assert spec.models[1].gguf == str(folder.resolve() / "m.gguf")
    assert spec.models[2].path == str(absolute)
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


# --------------------------------------------------------------------------------------------
# Validation that cannot be crashed or fooled
# --------------------------------------------------------------------------------------------

#: A valid sweep every case below changes in one place.
BASE_DOC: dict[str, Any] = {
    "name": "typed",
    "models": [{"hub": "org/model"}],
    "methods": ["dense", "2ssp"],
    "sparsities": [0.5],
    "calibration": {"source": "lee-calibration", "samples": [16]},
    "evaluation": {"perplexity": ["lee-evaluation"]},
}
SECTIONS = {CalibrationSpec: "calibration", EvaluationSpec: "evaluation", RuntimeSpec: "runtime"}
OWNERS = [SweepSpec, *SECTIONS, ModelSpec, FileSource, *(entry.spec for entry in METHODS.values())]


def problems_in(doc_or_text: Any, **kwargs: Any) -> list[SpecProblem]:
    """The problems of a sweep (a document or YAML text); [] when it is valid."""
    text = doc_or_text if isinstance(doc_or_text, str) else yaml.safe_dump(doc_or_text, sort_keys=False)
    try:
        parse_sweep(text, "s.yaml", **kwargs)
    except SpecError as exc:
        assert exc.problems and all(p.message for p in exc.problems)
        return exc.problems
    return []


def _scalar(annotation: Any) -> tuple[Any, bool]:
    """(the scalar type of a field, whether the field is a list of it); (None, _) for the others."""
    is_list = False
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [m for m in get_args(annotation) if m is not type(None)]
            if len(members) != 1:
                return None, is_list
            annotation = members[0]
        elif origin is list and not is_list:
            annotation, is_list = get_args(annotation)[0], True
        else:
            break
    if annotation is ByteSize or annotation not in (int, float, bool, str):
        return None, is_list
    return annotation, is_list


def placed(owner: type, field: str, value: Any) -> tuple[dict[str, Any], str]:
    """BASE_DOC with ``owner.field`` set to ``value`` (in a list for list fields), and the path
    a problem with it is reported at."""
    doc = copy.deepcopy(BASE_DOC)
    if _scalar(owner.model_fields[field].annotation)[1]:
        value, suffix = [value], "[0]"
    else:
        suffix = ""
    if owner is SweepSpec:
        doc[field], where = value, field
    elif owner in SECTIONS:
        doc.setdefault(SECTIONS[owner], {})[field] = value
        where = f"{SECTIONS[owner]}.{field}"
    elif owner is ModelSpec:
        doc["models"] = [{"hub": value} if field == "hub" else {"hub": "org/model", field: value}]
        where = f"models[0].{field}"
    elif owner is FileSource:
        doc["calibration"]["source"] = {"path": "calibration.jsonl", field: value}
        where = f"calibration.source.{field}"
    else:  # a method
        doc["methods"] = ["dense", {"name": owner.model_fields["name"].default, field: value}]
        where = f"methods[1].{field}"
    return doc, where + suffix


def typed_fields(*kinds: type) -> list[tuple[type, str, type]]:
    found = []
    for owner in OWNERS:
        for field, info in owner.model_fields.items():
            kind, _ = _scalar(info.annotation)
            if kind in kinds and not (field == "name" and owner not in (SweepSpec, ModelSpec)):
                found.append((owner, field, kind))
    return found


#: Values of the wrong type for each kind of field: what YAML 1.1 turns `yes`, `"8"`, `.inf` into.
WRONG = {
    int: [True, False, "8", 8.5, 8.0, float("inf"), float("nan")],
    float: [True, "0.5", float("inf"), float("-inf"), float("nan")],
    bool: ["yes", "true", 1, 0, None],
    str: [1, 1.5, True, ["x"], {"x": 1}],
}
TYPE_CASES = [(owner, field, wrong) for owner, field, kind in typed_fields(*WRONG) for wrong in WRONG[kind]]


def test_the_typed_field_walk_finds_every_kind() -> None:
    found = {(owner.__name__, field) for owner, field, _ in typed_fields(int, float, bool, str)}
    assert {("CalibrationSpec", "samples"), ("CalibrationSpec", "seq_len"), ("SweepSpec", "seeds"),
            ("RuntimeSpec", "threads"), ("ModelSpec", "cpus"), ("ModelSpec", "gpus"),
            ("ModelSpec", "trust_remote_code"), ("TwoSSPMethod", "alpha"), ("FileSource", "max_documents"),
            ("SweepSpec", "sparsities"), ("EvaluationSpec", "max_windows"), ("ModelSpec", "hub")} <= found
    assert len(TYPE_CASES) > 100


@pytest.mark.parametrize(("owner", "field", "wrong"), TYPE_CASES,
                         ids=[f"{o.__name__}.{f}={w!r}" for o, f, w in TYPE_CASES])
def test_strict_types_refuse_every_coercion_in_every_field(owner: type, field: str, wrong: Any) -> None:
    # booleans for numbers, numeric strings for numbers, strings for booleans, non-finite numbers
    doc, where = placed(owner, field, wrong)
    if wrong is None and owner.model_fields[field].default is None:
        pytest.skip("null is this field's default")
    problems = problems_in(doc, check_files=False)
    assert any(p.where == where for p in problems), (where, [str(p) for p in problems])


@pytest.mark.parametrize(
    ("owner", "field", "value"),
    [(ModelSpec, "memory", "48GiB"), (ModelSpec, "memory", 1024), (ModelSpec, "gpus", 1),
     (ModelSpec, "cpus", 2), (TwoSSPMethod, "alpha", 2), (ModelSpec, "resources", {"a100": 1}),
     (ModelSpec, "trust_remote_code", True), (RuntimeSpec, "threads", 4)],
)
def test_strict_types_keep_byte_size_strings_and_ints_for_floats(owner: type, field: str, value: Any) -> None:
    doc, _ = placed(owner, field, value)
    assert problems_in(doc) == []
    spec = parse_sweep(yaml.safe_dump(doc))
    assert spec.models[0].memory in (None, 48 * 2**30, 1024)


def test_booleans_and_strings_for_numbers_in_a_sweep_file() -> None:
    assert_reports(BAD_SWEEPS_DIR / "type-bool-for-number.yaml")


@pytest.mark.parametrize(
    ("change", "where", "text"),
    [
        ({"cpus": float("inf")}, "models[0].cpus", "finite"),
        ({"cpus": float("nan")}, "models[0].cpus", "finite"),
        ({"gpus": float("inf")}, "models[0].gpus", "finite"),
        ({"cpus": 0}, "models[0].cpus", "greater than 0"),
        ({"cpus": -1}, "models[0].cpus", "greater than 0"),
        ({"gpus": -0.5}, "models[0].gpus", "greater than or equal to 0"),
        ({"memory": 0}, "models[0].memory", "greater than 0"),
        ({"memory": "0GiB"}, "models[0].memory", "greater than 0"),
        ({"memory": -1}, "models[0].memory", ""),
        ({"resources": {"a100": 0}}, "models[0].resources.a100", "greater than 0"),
        ({"resources": {"a100": -2}}, "models[0].resources.a100", "greater than 0"),
        ({"resources": {"a100": float("inf")}}, "models[0].resources.a100", "finite"),
        ({"resources": {"a100": float("nan")}}, "models[0].resources.a100", "finite"),
    ],
)
def test_non_finite_numbers_and_non_positive_resources_are_refused(change: dict[str, Any], where: str,
                                                                   text: str) -> None:
    doc = copy.deepcopy(BASE_DOC)
    doc["models"][0].update(change)
    [problem] = problems_in(doc)
    assert problem.where == where and text in problem.message


def test_gpus_zero_is_a_cpu_run() -> None:
    doc = copy.deepcopy(BASE_DOC)
    doc["models"][0]["gpus"] = 0
    assert problems_in(doc) == []


def test_non_finite_numbers_in_a_sweep_file() -> None:
    assert_reports(BAD_SWEEPS_DIR / "non-finite-and-non-positive.yaml")


@pytest.mark.parametrize(("key", "field"), [("CPU", "cpus"), ("cpu", "cpus"), ("Cpu", "cpus"), ("GPU", "gpus"),
                                            ("gpu", "gpus"), ("memory", "memory"), ("MEMORY", "memory")])
def test_ray_own_resources_in_resources_point_to_the_model_fields(key: str, field: str) -> None:
    doc = copy.deepcopy(BASE_DOC)
    doc["models"][0]["resources"] = {key: 4, "a100": 1}
    [problem] = problems_in(doc)
    assert problem.where == "models[0].resources"
    assert f"use `{field}:` instead" in problem.message and repr(key) in problem.message
    assert_reports(BAD_SWEEPS_DIR / "resources-ray-own.yaml")


INT_FIELDS = typed_fields(int)


def test_every_int_field_is_found() -> None:
    names = {f"{owner.__name__}.{field}" for owner, field, _ in INT_FIELDS}
    assert {"CalibrationSpec.samples", "CalibrationSpec.seq_len", "SweepSpec.seeds", "EvaluationSpec.seq_len",
            "EvaluationSpec.max_windows", "RuntimeSpec.threads", "FileSource.max_documents",
            "TwoSSPMethod.num_calibration_second_stage", "EvoPressMethod.search_seed"} <= names


@pytest.mark.parametrize(("owner", "field"), [(o, f) for o, f, _ in INT_FIELDS],
                         ids=[f"{o.__name__}.{f}" for o, f, _ in INT_FIELDS])
def test_every_int_field_fits_the_databases_32_bit_integers(owner: type, field: str) -> None:
    doc, where = placed(owner, field, MAX_INT + 1)
    problems = problems_in(doc, check_files=False)
    assert any(p.where == where and "32-bit" in p.message for p in problems), [str(p) for p in problems]
    doc, _ = placed(owner, field, MAX_INT)  # the largest is fine (other checks may still object)
    assert not any("32-bit" in p.message for p in problems_in(doc, check_files=False))
    doc, _ = placed(owner, field, 10**400)
    assert any(p.where == where for p in problems_in(doc, check_files=False))


def test_integers_beyond_32_bits_in_a_sweep_file() -> None:
    assert_reports(BAD_SWEEPS_DIR / "int-beyond-32-bits.yaml")


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (MINIMAL + "evaluation:\n  perplexity: []\n", "evaluation.perplexity", "nothing to evaluate"),
        (MINIMAL.replace("name: minimal", 'name: "  "'), "name", "the sweep name is empty"),
        (MINIMAL.replace("name: minimal", 'name: ""'), "name", "the sweep name is empty"),
        (MINIMAL + 'save_to: ""\n', "save_to", "`save_to` is empty"),
        (MINIMAL.replace("hub: HuggingFaceTB/SmolLM2-135M", 'path: ""'), "models[0].path", "empty"),
        (MINIMAL.replace("hub: HuggingFaceTB/SmolLM2-135M", 'gguf: ""'), "models[0].gguf", "empty"),
        (MINIMAL.replace("hub: HuggingFaceTB/SmolLM2-135M", 'hub: ""'), "models[0].hub", "empty"),
        (MINIMAL.replace("hub: HuggingFaceTB/SmolLM2-135M", 'hub: " "'), "models[0].hub", "empty"),
        (MINIMAL + 'calibration:\n  source: {path: ""}\n', "calibration.source.path", "empty"),
    ],
)
def test_empty_values_are_refused(text: str, where: str, message: str) -> None:
    [problem] = problems_in(text)
    assert problem.where == where and message in problem.message


def test_empty_values_in_a_sweep_file() -> None:
    assert_reports(BAD_SWEEPS_DIR / "empty-strings.yaml")
    assert_reports(BAD_SWEEPS_DIR / "evaluation-empty.yaml")


def test_missing_local_files_are_found_at_validation_with_the_line_of_the_entry() -> None:
    path = BAD_SWEEPS_DIR / "missing-files.yaml"
    assert_reports(path)
    problems = problems_of(path)
    assert [p.where for p in problems] == [
        "models[0].path", "models[1].path", "models[2].gguf", "models[3].path", "calibration.source.path",
        "evaluation.perplexity[1].path", "evaluation.perplexity[2].path"]
    assert str(BAD_SWEEPS_DIR / "no-such-model") in problems[0].message  # made absolute from the sweep file


def test_existing_local_files_pass_and_check_files_false_skips_the_check(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "calib.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "eval.txt").write_text("b")
    text = ("name: local\nmodels:\n  - path: model\n  - gguf: m.gguf\nmethods: [dense, 2ssp]\nsparsities: [0.5]\n"
            "calibration: {source: {path: calib.jsonl}}\nevaluation: {perplexity: [{path: eval.txt}]}\n")
    assert parse_sweep(text, "s.yaml", tmp_path).models[0].path == str(tmp_path / "model")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert len(problems_in(text.replace("name: local", "name: x"), base_dir=elsewhere)) == 4
    assert parse_sweep(text, "s.yaml", elsewhere, check_files=False).calibration.source.path == str(
        elsewhere / "calib.jsonl")


def test_a_path_too_long_or_with_a_nul_is_a_problem_not_a_crash() -> None:
    long = "x" * 5000
    [problem] = problems_in(MINIMAL.replace("hub: HuggingFaceTB/SmolLM2-135M", f"path: /{long}/m"))
    assert problem.where == "models[0].path" and "cannot read" in problem.message
    [problem] = problems_in(MINIMAL.replace("hub: HuggingFaceTB/SmolLM2-135M", 'path: "a\\0b"'))
    assert problem.where == "models[0].path" and "NUL" in problem.message
    [problem] = problems_in(MINIMAL.replace("hub: HuggingFaceTB/SmolLM2-135M", "path: ~no-such-user-x/m"))
    assert "no such user" in problem.message


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    lines = ["a0: &a0 [" + ",".join(['"lol"'] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_at_once_in_little_memory() -> None:
    text = billion_laughs()
    assert len(text) < 500  # 9**9 values, spelled in a few hundred bytes
    tracemalloc.start()
    started = time.perf_counter()
    try:
        [problem] = problems_in(text)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"the YAML expands to more than {MAX_NODES:,} values (anchors and aliases" in problem.message
    assert elapsed < 0.5 and peak < 10 * 2**20, (elapsed, peak)
    assert_reports(BAD_SWEEPS_DIR / "yaml-alias-bomb.yaml")


def test_aliases_within_the_limit_are_fine() -> None:
    text = MINIMAL + "  - &twossp {name: 2ssp, alpha: 1.5}\nsparsities: &s [0.25, 0.5]\n" \
        "calibration: {source: lee-calibration}\nevaluation: {perplexity: [lee-evaluation]}\n"
    spec = parse_sweep(text)
    assert spec.sparsities == [0.25, 0.5] and spec.methods[1] == TwoSSPMethod(alpha=1.5)


@pytest.mark.parametrize(
    "text",
    ["a: " + "[" * 10_000, "a: " + "[" * 200 + "]" * 200, "a: " + "{a: " * 5000, "- " * 10_000 + "x",
     "a:\n" + "".join(" " * i + "- \n" for i in range(1, 300)),
     # shallow text, deep through aliases: 11 levels of 10
     "".join(f"l{i}: &l{i} [[[[[[[[[[{'*l' + str(i - 1) if i else 'x'}]]]]]]]]]]\n" for i in range(11))],
    ids=["flow-10000", "flow-200-closed", "mappings-5000", "block-10000", "indented-300", "through-aliases"],
)
def test_deep_nesting_is_one_problem_not_a_recursion_error(text: str) -> None:
    started = time.perf_counter()
    [problem] = problems_in(text)
    assert f"nested more than {MAX_DEPTH} levels deep" in problem.message, problem
    assert problem.line is not None and time.perf_counter() - started < 2


def test_deep_nesting_in_a_sweep_file() -> None:
    assert_reports(BAD_SWEEPS_DIR / "yaml-deep-nesting.yaml")


def test_a_recursion_error_anywhere_is_still_one_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    import twossp.spec.sweep_file

    def recurse(*args: Any) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(twossp.spec.sweep_file, "cross_checks", recurse)
    [problem] = problems_in(MINIMAL)
    assert "nested more than" in problem.message


def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    [problem] = problems_in("name: x\nmodels: &m [*m]\nmethods: [dense]\n")
    assert "inside its own anchor" in problem.message and problem.line == 2
    assert_reports(BAD_SWEEPS_DIR / "yaml-recursive-alias.yaml")


@pytest.mark.parametrize(
    ("value", "message"),
    [('!!int "0x"', "cannot read '0x' as !!int"), ("!!float abc", "cannot read 'abc' as !!float"),
     ("!!timestamp soon", "cannot read 'soon' as !!timestamp"), ("9" * 5000, "more than 4,300 digits"),
     ('!!binary "a"', "invalid YAML"), ("!!python/object:os.system x", "invalid YAML"),
     ('"\\ud800"', "lone surrogate"), ("*nowhere", "undefined alias")],
)
def test_yaml_values_pyyaml_cannot_build_are_yaml_problems(value: str, message: str) -> None:
    [problem] = problems_in(MINIMAL + f"description: {value}\n")
    assert message in problem.message and problem.line == 6, problem
    assert_reports(BAD_SWEEPS_DIR / "yaml-value-pyyaml-cannot-build.yaml")


def test_one_mistake_in_each_of_three_sections_reports_them_all_with_cross_section_problems() -> None:
    path = BAD_SWEEPS_DIR / "one-mistake-in-three-sections.yaml"
    assert_reports(path)
    found = {(p.where, p.message.split(" (")[0].split(";")[0]) for p in problems_of(path)}
    assert ("models[0].gpus", "Input should be greater than or equal to 0") in found      # models
    assert ("methods[1]", "unknown method '3ssp'") in found                            # methods
    assert ("calibration.seq_len", "Input should be a valid integer") in found          # calibration
    # cross-section checks, each on the valid parts of sections that have an invalid one
    assert ("methods[0].num_calibration_second_stage",
            "needs 64 calibration samples but the smallest calibration size is 16") in found
    assert ("evaluation.perplexity[0]", "evaluation text is the calibration text") in found
    assert ("sparsities[1]", "duplicate value 0.5") in found


def test_an_invalid_method_hides_no_check_of_the_valid_ones() -> None:
    text = (
        "name: all\nmodels: [{hub: org/model}]\n"
        "methods:\n"
        "  - dense\n"
        "  - {name: blockpruner, num_calibration: 0}\n"         # line 5: invalid
        "  - {name: 2ssp, num_calibration_second_stage: 64}\n"  # line 6: needs 64 windows
        "  - {name: 2ssp, num_calibration_second_stage: 64}\n"  # line 7: duplicate
        "calibration: {source: lee-calibration, samples: [16, oops]}\n"  # line 8: invalid item
        "evaluation: {perplexity: [lee-calibration, lee-calibration, 7]}\n"  # line 9
    )
    found = {(p.line, p.where, p.message.split(" (")[0]) for p in problems_in(text)}
    expected = {
        (5, "methods[1].num_calibration", "Input should be greater than or equal to 1"),
        (7, "methods[3]", "duplicate method"),
        (6, "methods[2]", "pruning methods need at least one entry in `sparsities`"),  # the first valid one
        (6, "methods[2].num_calibration_second_stage", "needs 64 calibration samples but the smallest calibration "
                                                       "size is 16"),
        (7, "methods[3].num_calibration_second_stage", "needs 64 calibration samples but the smallest calibration "
                                                       "size is 16"),
        (8, "calibration.samples[1]", "Input should be a valid integer"),
        (9, "evaluation.perplexity[0]", "evaluation text is the calibration text; they must not overlap"),
        (9, "evaluation.perplexity[1]", "evaluation text is the calibration text; they must not overlap"),
        (9, "evaluation.perplexity", "duplicate evaluation datasets in ['lee-calibration', 'lee-calibration']"),
        (9, "evaluation.perplexity[2]", "Input should be a valid string"),
    }
    assert expected <= found, "\n".join(map(str, sorted(found)))


def test_sparsities_given_with_only_dense_waits_for_every_method_to_be_valid() -> None:
    # `2sp` is a typo for a pruning method: "only the dense method" would be wrong
    problems = problems_in(MINIMAL + "  - 2sp\nsparsities: [0.5]\n")
    assert [p.where for p in problems] == ["methods[1]"]
    assert problems_in(MINIMAL + "sparsities: [0.5]\n")[0].message == \
        "sparsities given but only the dense method is listed"


def test_a_bad_calibration_field_hides_neither_the_source_nor_the_overlap_check() -> None:
    text = MINIMAL + "  - 2ssp\nsparsities: [0.5]\ncalibration: {source: wikitext2, seq_len: long}\n"
    messages = [p.message for p in problems_in(text)]
    assert "Input should be a valid integer" in messages
    assert "evaluation text is the calibration text; they must not overlap" in messages
    text = MINIMAL + "  - 2ssp\nsparsities: [0.5]\ncalibration: {source: wikitxt, seq_len: long}\n"
    assert {p.where for p in problems_in(text)} == {"calibration.source", "calibration.seq_len"}


@pytest.mark.parametrize(
    ("text", "where", "hint"),
    [
        (MINIMAL.replace("- dense", "- dnse"), "methods[0]", "did you mean 'dense'?"),
        (MINIMAL.replace("- dense", "- {name: evopres}"), "methods[0]", "did you mean 'evopress'?"),
        (MINIMAL + "evaluation: {perplexity: [wikitext]}\n", "evaluation.perplexity[0]", "did you mean 'wikitext2'?"),
        (MINIMAL + "calibration: {source: c4train}\n", "calibration.source", "did you mean 'c4-train'?"),
        (MINIMAL.replace("hub: HuggingFaceTB/SmolLM2-135M", "builtin: smollm2-135m-instruc"), "models[0].builtin",
         "did you mean 'smollm2-135m-instruct'?"),
        (MINIMAL + "sparsity: [0.5]\n", "sparsity", "did you mean 'sparsities'?"),
        (MINIMAL + "  - {name: 2ssp, alhpa: 2}\nsparsities: [0.5]\n", "methods[1].alhpa", "did you mean 'alpha'?"),
        (MINIMAL + "calibration: {seqlen: 128}\n", "calibration.seqlen", "did you mean 'seq_len'?"),
        (MINIMAL + "evaluation: {max_window: 4}\n", "evaluation.max_window", "did you mean 'max_windows'?"),
        (MINIMAL + "runtime: {thread: 4}\n", "runtime.thread", "did you mean 'threads'?"),
        (MINIMAL.replace("hub: HuggingFaceTB/SmolLM2-135M", "hub: org/m\n    revison: v2"), "models[0].revison",
         "did you mean 'revision'?"),
        (MINIMAL + "evaluation: {perplexity: [{path: /a.txt, text_feild: body}]}\n",
         "evaluation.perplexity[0].text_feild", "did you mean 'text_field'?"),
    ],
)
def test_unknown_names_and_keys_say_did_you_mean(text: str, where: str, hint: str) -> None:
    problems = problems_in(text, check_files=False)
    assert any(p.where == where and hint in p.message for p in problems), [str(p) for p in problems]


def test_no_did_you_mean_when_nothing_is_close() -> None:
    [problem] = problems_in(MINIMAL + "colour: blue\n")
    assert problem.message == "unknown key 'colour'"
    assert_reports(BAD_SWEEPS_DIR / "did-you-mean.yaml")


def test_messages_are_plain_text() -> None:
    problems = problems_in(MINIMAL + '"\\e[2J[bold]x[/]": 1\nruntime: {device: "\\x07"}\n')
    assert all(p.message.isprintable() and p.where.isprintable() for p in problems)
    assert "unknown key '\\x1b[2J[bold]x[/]'" in [p.message for p in problems]
