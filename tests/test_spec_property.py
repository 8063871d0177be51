"""Property: no sweep text crashes or stalls validation.

The shipped sweeps (``sweeps/quickstart.yaml``, ``sweeps/llama.yaml``) are mutated, as documents
(a value replaced by another type, keys deleted, added, renamed, duplicated, values wrapped in
lists) and as text (truncation, tabs, random characters, anchors and aliases, deep brackets), and
``parse_sweep`` must either return a ``SweepSpec`` or raise ``SpecError`` whose every problem has
a message: never any other exception, within 2 s and 200 MB (tracemalloc peak) per example.
``twossp sweep validate`` on mutated files must exit 0 or 2, without a traceback.
"""

from __future__ import annotations

import copy
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twossp.errors import SpecError
from twossp.methods import METHODS
from twossp.spec import (
    CalibrationSpec,
    EvaluationSpec,
    FileSource,
    ModelSpec,
    RuntimeSpec,
    SweepSpec,
    parse_sweep,
)

REPO = Path(__file__).resolve().parents[1]
SWEEP_DIR = REPO / "sweeps"
SWEEPS = {name: (SWEEP_DIR / name).read_text(encoding="utf-8") for name in ("quickstart.yaml", "llama.yaml")}
DOCS = {name: yaml.safe_load(text) for name, text in SWEEPS.items()}

MAX_SECONDS = 2.0
MAX_PEAK_BYTES = 200 * 2**20

PROPERTY = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_the_shipped_sweeps_are_valid() -> None:
    for name, text in SWEEPS.items():
        assert isinstance(parse_sweep(text, name, SWEEP_DIR), SweepSpec)


# --------------------------------------------------------------------------------------------
# The property
# --------------------------------------------------------------------------------------------


def assert_validates_or_explains(text: str) -> None:
    """``parse_sweep`` returns a spec or raises SpecError with messages, in bounded time and memory."""
    tracing = tracemalloc.is_tracing()
    if tracing:
        tracemalloc.reset_peak()
    else:
        tracemalloc.start()
    started = time.perf_counter()
    try:
        try:
            spec = parse_sweep(text, "mutated.yaml", SWEEP_DIR)
        except SpecError as exc:
            assert exc.problems, "a SpecError without problems"
            for problem in exc.problems:
                assert isinstance(problem.message, str) and problem.message.strip(), problem
                assert problem.file == "mutated.yaml"
                assert problem.line is None or problem.line >= 1
                assert problem.message.isprintable() and problem.where.isprintable(), problem
            str(exc)  # renders
        else:
            assert isinstance(spec, SweepSpec)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        if not tracing:
            tracemalloc.stop()
    assert elapsed < MAX_SECONDS, f"{elapsed:.2f} s"
    assert peak < MAX_PEAK_BYTES, f"{peak / 2**20:.0f} MB"


# --------------------------------------------------------------------------------------------
# Document mutations
# --------------------------------------------------------------------------------------------

#: Every key a sweep knows, so added and renamed keys are often real ones in the wrong place.
KNOWN_KEYS = sorted({*SweepSpec.model_fields, *CalibrationSpec.model_fields, *EvaluationSpec.model_fields,
                     *RuntimeSpec.model_fields, *ModelSpec.model_fields, *FileSource.model_fields,
                     *(f for entry in METHODS.values() for f in entry.spec.model_fields), *METHODS})

NASTY_STRINGS = [
    "", " ", "yes", "no", "on", "off", "1", "0.5", "-1", "1e400", ".inf", ".nan", "null", "~", "48GiB", "0B",
    "[bold]x[/]", "[/]", "[red]", "\x1b[31mred\x1b[0m", "\x07", "x" * 5000, "é✓😀 ünïcödé", "\t", "a\nb",
    "~no-such-user-x/m", "/", "/dev/null", "../../..", "a\x00b", "*", "&", "%", "!!int", "'", '"', "wikitext",
    "lee-calibration", "c4-train", "smollm2-135m-instruct", "2ssp", "dense", "CPU", "GPU", "memory",
]
NASTY_NUMBERS = [0, -1, 1, 2, 8, 2**31 - 1, 2**31, 2**63, 10**30, -(10**30), 10**400, 0.0, -0.0, 0.5, 1.5,
                 1e308, -1e308, 5e-324, float("inf"), float("-inf"), float("nan")]

scalars = st.one_of(
    st.booleans(), st.none(),
    st.sampled_from(NASTY_NUMBERS), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NASTY_STRINGS), st.text(max_size=12),
)
nasty = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=6)), inner,
                                            max_size=3)),
    max_leaves=6,
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=10), st.sampled_from([1, 0, True, None, 1.5]))


def _slots(node: Any, slots: list[tuple[Any, Any]] | None = None) -> list[tuple[Any, Any]]:
    """Every (container, key-or-index) of a document."""
    slots = [] if slots is None else slots
    if isinstance(node, dict):
        for k in list(node):
            slots.append((node, k))
            _slots(node[k], slots)
    elif isinstance(node, list):
        for i in range(len(node)):
            slots.append((node, i))
            _slots(node[i], slots)
    return slots


@st.composite
def mutated_document(draw: st.DrawFn) -> str:
    doc = copy.deepcopy(DOCS[draw(st.sampled_from(sorted(DOCS)))])
    for _ in range(draw(st.integers(1, 4))):
        slots = _slots(doc)
        container, key = draw(st.sampled_from(slots))
        op = draw(st.sampled_from(["replace", "replace", "delete", "add", "rename", "wrap-list", "wrap-dict",
                                   "repeat"]))
        if op == "replace":
            container[key] = draw(nasty)
        elif op == "delete":
            del container[key]
        elif op == "add":
            target = container[key] if isinstance(container[key], (dict, list)) else container
            if isinstance(target, dict):
                target[draw(keys)] = draw(nasty)
            else:
                target.insert(draw(st.integers(0, len(target))), draw(nasty))
        elif op == "rename" and isinstance(container, dict):
            new = draw(keys)
            if new not in container:
                container[new] = container.pop(key)
        elif op == "wrap-list":
            container[key] = [container[key]]
        elif op == "wrap-dict":
            container[key] = {draw(keys): container[key]}
        elif op == "repeat" and isinstance(container, list):
            container.extend([container[key]] * draw(st.integers(1, 3)))
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=draw(st.booleans()),
                          default_flow_style=draw(st.sampled_from([False, None, True])))
    if draw(st.booleans()):  # duplicate a top-level or nested key line (YAML keeps the last one)
        lines = text.splitlines(keepends=True)
        i = draw(st.integers(0, len(lines) - 1))
        lines.insert(draw(st.integers(0, len(lines))), lines[i])
        text = "".join(lines)
    return text


@PROPERTY
@given(mutated_document())
def test_document_mutations_validate_or_explain(text: str) -> None:
    assert_validates_or_explains(text)


# --------------------------------------------------------------------------------------------
# Text mutations
# --------------------------------------------------------------------------------------------


def _bomb(levels: int) -> str:
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n']
    lines += [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, levels)]
    return "".join(lines)


INSERTS = [
    "\t", "\n", "\r", "\r\n", " ", "  ", ":", ": ", "-", "- ", "[", "]", "{", "}", ",", "#", "&a ", "*a", "*a ",
    "&a [*a]", "!!int ", "!!float ", "!!timestamp ", "!!binary ", "!!python/object:os.system ", "!foo ", "|", ">",
    "'", '"', "%YAML 1.1\n", "---\n", "...\n", "? ", "<<: *a\n", "<<: ", "\ufeff", "\x00", "\ud800", "\x85",
    "\u2028", "\x1b[2J", "[bold]", "[/]", "9" * 5000, "[" * 150, "{a: " * 150, "- " * 150, _bomb(9), _bomb(4),
    "x: &x [[[[[[[[[[1]]]]]]]]]]\n" + "".join(f"y{i}: &y{i} [[[[[[[[[[*{'x' if i == 0 else f'y{i - 1}'}]]]]]]]]]]\n"
                                                 for i in range(11)),
    "a: &a {hub: x}\nb: *a\n", "models: *nowhere\n", "name: &n x\n", "description: *n\n",
]


@st.composite
def mutated_text(draw: st.DrawFn) -> str:
    text = SWEEPS[draw(st.sampled_from(sorted(SWEEPS)))]
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["insert", "insert", "random", "truncate", "delete", "duplicate-line",
                                   "swap-lines", "indent", "replace-line"]))
        at = draw(st.integers(0, len(text)))
        lines = text.splitlines(keepends=True) or [""]
        line = draw(st.integers(0, len(lines) - 1))
        if op == "insert":
            text = text[:at] + draw(st.sampled_from(INSERTS)) + text[at:]
        elif op == "random":
            text = text[:at] + draw(st.text(min_size=1, max_size=8)) + text[at:]
        elif op == "truncate":
            text = text[:at]
        elif op == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 40)):]
        elif op == "duplicate-line":
            lines.insert(line, lines[line])
            text = "".join(lines)
        elif op == "swap-lines":
            other = draw(st.integers(0, len(lines) - 1))
            lines[line], lines[other] = lines[other], lines[line]
            text = "".join(lines)
        elif op == "indent":
            lines[line] = " " * draw(st.integers(1, 5)) + lines[line]
            text = "".join(lines)
        else:
            lines[line] = draw(st.sampled_from(INSERTS)) + "\n"
            text = "".join(lines)
    return text


@PROPERTY
@given(mutated_text())
def test_text_mutations_validate_or_explain(text: str) -> None:
    assert_validates_or_explains(text)


@pytest.mark.parametrize("insert", INSERTS, ids=[repr(i[:12]) for i in INSERTS])
def test_every_insert_at_a_value_validates_or_explains(insert: str) -> None:
    for name, text in SWEEPS.items():
        assert_validates_or_explains(text.replace("name: ", f"name: {insert}", 1))
        assert_validates_or_explains(text + "\n" + insert)


# --------------------------------------------------------------------------------------------
# The command line contract: exit 0 or 2, never a traceback
# --------------------------------------------------------------------------------------------


def _validate(text: str) -> None:
    from twossp import cli

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mutated.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        result = CliRunner().invoke(cli.main, ["sweep", "validate", str(path)])
    assert result.exit_code in (0, 2), (result.exit_code, result.output, repr(result.exception))
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


HANDPICKED = [
    SWEEPS["quickstart.yaml"], SWEEPS["llama.yaml"], _bomb(9), "a: " + "[" * 10_000, "",
    SWEEPS["llama.yaml"].replace("gpus: 1", "gpus: .nan\n    resources: {CPU: 4}"),
    SWEEPS["quickstart.yaml"].replace("name: quickstart", 'name: "[bold]x[/] \\e[31m"\ncolour: "[/]"'),
    SWEEPS["quickstart.yaml"].replace("seeds: [0]", "seeds: [99999999999]\nsave_to: ''"),
    SWEEPS["quickstart.yaml"].replace("samples: [16]", "samples: [yes]").replace("  - window\n", "  - windwo\n"),
    SWEEPS["quickstart.yaml"][:200],
]


@pytest.mark.parametrize("text", HANDPICKED, ids=[f"handpicked-{i}" for i in range(len(HANDPICKED))])
def test_cli_validate_exits_0_or_2_on_handpicked_files(text: str) -> None:
    _validate(text)


@settings(max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated_document(), mutated_text()))
def test_cli_validate_exits_0_or_2_on_mutated_files(text: str) -> None:
    _validate(text)
