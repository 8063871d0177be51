"""The checks of a sweep that span sections, as named rules: each a small function that says what
it protects and yields its problems, each at the line of the offending entry. ``cross_checks`` runs
them all, in the order of ``RULES`` (the order problems on one line are reported in), so one
``twossp sweep validate`` reports every problem at once.

The rules also run on a partly invalid sweep (``fields.partial``: an invalid field or list item is
None), each on the valid parts it reads, in the same round as the type errors.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

from twossp.errors import DataUnavailable, SpecProblem
from twossp.methods import method_of
from twossp.spec.messages import show
from twossp.spec.schema import UNION_TAGS, FileSource, SweepSpec, TaskSpec, TextSource, source_identity, source_label
from twossp.spec.yaml_file import Located, locate
from twossp.tasks import locate as locate_task_files
from twossp.tasks import task_folder


def _valid(items: Any) -> list[tuple[int, Any]]:
    """(index, item) of a list's valid items (a partial sweep's invalid ones are None)."""
    return [(i, item) for i, item in enumerate(items or []) if item is not None]


@dataclass(frozen=True)
class SweepFile:
    """What the rules read: a sweep (a ``SweepSpec``, or what validates of an invalid one), the YAML
    tree its lines come from, the file's name, and whether to look at this machine's files."""

    spec: SweepSpec | SimpleNamespace
    tree: Located
    file: str
    check_files: bool

    def problem(self, loc: tuple[Any, ...], message: str) -> SpecProblem:
        """A problem at the line of ``loc`` (a path into the sweep, as Pydantic spells one)."""
        return SpecProblem(self.file, *locate(self.tree, loc, UNION_TAGS), message)

    def where(self, loc: tuple[Any, ...]) -> str:
        """``loc`` as a message names it (``sparsities[0]``)."""
        return locate(self.tree, loc, UNION_TAGS)[1]

    @property
    def methods(self) -> list[tuple[int, Any]]:
        return _valid(self.spec.methods)

    @property
    def pruning(self) -> list[int]:
        """Indices of the valid methods that prune (all but dense)."""
        return [i for i, m in self.methods if method_of(m).prunes]

    @property
    def samples(self) -> list[int | None] | None:
        return self.spec.calibration.samples if self.spec.calibration is not None else None

    @property
    def calibration_source(self) -> TextSource | None:
        return self.spec.calibration.source if self.spec.calibration is not None else None

    @property
    def datasets(self) -> list[TextSource | None] | None:
        """The perplexity datasets (None where the evaluation section or the list is invalid)."""
        return self.spec.evaluation.perplexity if self.spec.evaluation is not None else None

    @property
    def tasks(self) -> list[tuple[int, TaskSpec]]:
        return _valid(getattr(self.spec.evaluation, "tasks", None))


Rule = Callable[[SweepFile], Iterator[SpecProblem]]


def _reads_files(rule: Rule) -> Rule:
    """A rule that looks at this machine's files: skipped when a sweep is checked without them
    (``check_files=False``, say for a sweep meant for a cluster's paths)."""

    @functools.wraps(rule)
    def checked(sweep: SweepFile) -> Iterator[SpecProblem]:
        return rule(sweep) if sweep.check_files else iter(())

    return checked


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
        return f"cannot read {show(str(p))}: {getattr(exc, 'strerror', None) or exc}"
    return None


# --------------------------------------------------------------------------------------------
# The grid: each model, method and value once
# --------------------------------------------------------------------------------------------


def models_are_distinct(sweep: SweepFile) -> Iterator[SpecProblem]:
    """Each model once: the same weights twice would run every run twice, and two models with one
    label could not be told apart in the results."""
    seen_weights: dict[str, int] = {}
    seen_labels: dict[str, int] = {}
    for i, m in _valid(sweep.spec.models):
        weights = repr(sorted(m.identity.items()))
        if weights in seen_weights:
            yield sweep.problem(("models", i), f"duplicate model (same weights as models[{seen_weights[weights]}])")
        elif m.label in seen_labels:
            yield sweep.problem(("models", i), f"model label {m.label!r} is already used by "
                                f"models[{seen_labels[m.label]}]; give one of them a distinct `name:`")
        seen_weights.setdefault(weights, i)
        seen_labels.setdefault(m.label, i)


def methods_are_distinct(sweep: SweepFile) -> Iterator[SpecProblem]:
    """Each method (with its settings) once: a repeated one would plan the same runs twice."""
    seen: dict[str, int] = {}
    for i, meth in sweep.methods:
        key = meth.model_dump_json()
        if key in seen:
            yield sweep.problem(("methods", i), f"duplicate method (same as methods[{seen[key]}])")
        seen.setdefault(key, i)


def values_are_distinct(sweep: SweepFile) -> Iterator[SpecProblem]:
    """Each sparsity, seed and calibration size once: a repeated value would plan the same runs twice."""
    for loc, values in ((("sparsities",), sweep.spec.sparsities), (("seeds",), sweep.spec.seeds),
                        (("calibration", "samples"), sweep.samples)):
        first: dict[Any, int] = {}
        for i, value in _valid(values):
            if value in first:
                yield sweep.problem((*loc, i),
                                    f"duplicate value {value!r} (same as {sweep.where((*loc, first[value]))})")
            first.setdefault(value, i)


def pruning_has_sparsities(sweep: SweepFile) -> Iterator[SpecProblem]:
    """A pruning method needs a sparsity to prune to (an empty `sparsities` would plan no run of it)."""
    pruning, sparsities = sweep.pruning, sweep.spec.sparsities
    if pruning and sparsities is not None and not sparsities:
        yield sweep.problem(("sparsities",) if "sparsities" in sweep.tree.children else ("methods", pruning[0]),
                            "pruning methods need at least one entry in `sparsities`")


def sparsities_have_a_pruning_method(sweep: SweepFile) -> Iterator[SpecProblem]:
    """Sparsities with only the dense method are a mistake: no run would use them. Only said when
    every method is readable (an invalid one may be a pruning method)."""
    methods, listed = sweep.methods, sweep.spec.methods
    if listed is not None and len(methods) == len(listed) and methods and not sweep.pruning and sweep.spec.sparsities:
        yield sweep.problem(("sparsities",), "sparsities given but only the dense method is listed")


# --------------------------------------------------------------------------------------------
# Evaluation: held-out text, something to measure, each task once and its files found
# --------------------------------------------------------------------------------------------


def evaluation_text_is_held_out(sweep: SweepFile) -> Iterator[SpecProblem]:
    """Perplexity is measured on text the pruning never saw: evaluating on the calibration text would
    flatter every pruned model."""
    if not sweep.pruning or sweep.calibration_source is None:
        return
    calibration = source_identity(sweep.calibration_source)
    for i, source in _valid(sweep.datasets):
        if source_identity(source) == calibration:
            yield sweep.problem(("evaluation", "perplexity", i),
                                "evaluation text is the calibration text; they must not overlap")


def _recoveries(sweep: SweepFile) -> list[tuple[int, Any]]:
    """(index, settings) of the valid ``recovery:`` entries that recover (not ``none``)."""
    return _valid(getattr(sweep.spec, "recovery", None))


def _at(sweep: SweepFile, loc: tuple[Any, ...], field: str) -> tuple[Any, ...]:
    """``loc`` + ``field`` where the file spells the field out, else ``loc`` (a default or shorthand)."""
    node: Located | None = sweep.tree
    for part in loc:
        node = node.children.get(part) if node is not None else None
    return (*loc, field) if node is not None and field in node.children else loc


def recovery_text_is_held_out(sweep: SweepFile) -> Iterator[SpecProblem]:
    """A pruned model is never healed on the text it is evaluated on: training on the evaluation text
    would beat the dense model and mean nothing."""
    evaluated = {source_identity(s): source_label(s) for _, s in _valid(sweep.datasets)}
    for i, recovery in _recoveries(sweep):
        label = evaluated.get(source_identity(recovery.data))
        if label is not None:
            yield sweep.problem(_at(sweep, ("recovery", i), "data"),
                                f"recovery text is the evaluation text {label!r}: healing on it would flatter the "
                                "recovered model; recover on other text (`data:`)")


def recovery_labels_are_distinct(sweep: SweepFile) -> Iterator[SpecProblem]:
    """Each recovery once, under a label of its own: results are shown under it."""
    seen: dict[str, int] = {}
    settings: dict[str, int] = {}
    for i, recovery in _recoveries(sweep):
        same = json.dumps(recovery.identity(), sort_keys=True)
        if same in settings:
            yield sweep.problem(("recovery", i), f"duplicate recovery (same settings as recovery[{settings[same]}])")
        elif recovery.label in seen:
            yield sweep.problem(("recovery", i), f"recovery label {recovery.label!r} is already used by "
                                f"recovery[{seen[recovery.label]}]; give one of them a distinct `name:`")
        seen.setdefault(recovery.label, i)
        settings.setdefault(same, i)


def recovery_has_a_pruned_model(sweep: SweepFile) -> Iterator[SpecProblem]:
    """Recovery heals a pruned model, rebuilt from its pruning run's stored masks: a sweep with only
    the dense method has none, and a method whose models are not masks (SliceGPT) cannot be rebuilt."""
    recoveries = _recoveries(sweep)
    if not recoveries:
        return
    methods, listed = sweep.methods, sweep.spec.methods
    if listed is not None and len(methods) == len(listed) and methods and not sweep.pruning:
        yield sweep.problem(("recovery",), "recovery given but only the dense method is listed: there is no pruned "
                            "model to recover")
    for i, method in methods:
        if method_of(method).prunes and method_of(method).export_refusal:
            yield sweep.problem(("methods", i), f"{method.name} runs cannot be recovered: a recovered run rebuilds "
                                "its pruning run's model from the layer masks the database holds, and "
                                f"{method.name}'s model is not its masks (its rotations are not stored); list it "
                                "in a sweep without `recovery:`")


def recovery_runs_on_one_device(sweep: SweepFile) -> Iterator[SpecProblem]:
    """Recovery trains the whole model (and the dense teacher) on one device."""
    placement = getattr(sweep.spec.runtime, "placement", None) if sweep.spec.runtime is not None else None
    if _recoveries(sweep) and placement in ("split", "stream"):
        yield sweep.problem(("runtime", "placement"), f"recovery trains the whole model on one device, not placed "
                            f"`{placement}`; use `placement: single` or `auto`")


def evaluation_datasets_are_distinct(sweep: SweepFile) -> Iterator[SpecProblem]:
    """Each perplexity dataset once: results are stored and shown under its label."""
    labels = [source_label(s) for _, s in _valid(sweep.datasets)]
    if len(set(labels)) != len(labels):
        yield sweep.problem(("evaluation", "perplexity"), f"duplicate evaluation datasets in {labels}")


def something_to_evaluate(sweep: SweepFile) -> Iterator[SpecProblem]:
    """A sweep measures something: perplexity, a task, speed or generations (an empty `perplexity`
    and nothing else would prune and store no number)."""
    evaluation = sweep.spec.evaluation
    if evaluation is None or evaluation.perplexity is None or evaluation.perplexity:
        return
    if getattr(evaluation, "tasks", None) == [] and getattr(evaluation, "speed", None) is None \
            and getattr(evaluation, "generate", None) is None:
        yield sweep.problem(("evaluation", "perplexity"), "nothing to evaluate: list at least one dataset in "
                            "`perplexity` (a named source or {path: FILE}), a task in `tasks`, `speed` or `generate`")


def tasks_are_listed_once(sweep: SweepFile) -> Iterator[SpecProblem]:
    """Each lm-eval task once: its scores are stored under its name."""
    first: dict[str, int] = {}
    for i, task in sweep.tasks:
        if task.name in first:
            yield sweep.problem(("evaluation", "tasks", i),
                                f"task {task.name} is listed twice (also tasks[{first[task.name]}])")
        first.setdefault(task.name, i)


def _task_data(sweep: SweepFile) -> str | None:
    """The ``evaluation.task_data`` folder the sweep names, when it is one."""
    task_data = getattr(sweep.spec.evaluation, "task_data", None)
    return task_data if task_data and Path(task_data).is_dir() else None


@_reads_files
def task_data_folder_exists(sweep: SweepFile) -> Iterator[SpecProblem]:
    """``evaluation.task_data`` is a folder on this machine (the tasks' files are looked up in it)."""
    task_data = getattr(sweep.spec.evaluation, "task_data", None)
    if task_data and not Path(task_data).is_dir():
        yield sweep.problem(("evaluation", "task_data"), f"task data folder not found: {task_data}")


@_reads_files
def task_files_are_found(sweep: SweepFile) -> Iterator[SpecProblem]:
    """Every task's published files are found (in its own ``data:`` folder, or in its sub-folder of
    ``task_data``): a task whose data is missing is refused before any run starts, not after the
    pruning. A task with neither reads the harness's hub dataset, which is not checked here."""
    task_data = _task_data(sweep)
    for i, task in sweep.tasks:
        yield from _task_files(sweep, i, task, task_data)


def _task_files(sweep: SweepFile, i: int, task: TaskSpec, task_data: str | None) -> Iterator[SpecProblem]:
    """The problems of the folder of ``evaluation.tasks[i]`` (see ``task_files_are_found``)."""
    if task.data:
        folder: str | Path | None = task.data
        if not Path(folder).is_dir():
            yield sweep.problem(("evaluation", "tasks", i, "data"),
                                f"task {task.name}: data folder not found: {folder}")
            return
    elif task_data:
        folder, tried = task_folder(task.task, task_data)
        if folder is None:
            yield sweep.problem(("evaluation", "tasks", i),
                                f"task {task.name}: no folder for it in task_data; tried {', '.join(tried)}")
            return
    else:  # the harness's hub dataset
        return
    try:
        locate_task_files(task.task, folder, tuple(task.subjects or ()), fewshot=task.num_fewshot > 0)
    except DataUnavailable as exc:
        yield sweep.problem(("evaluation", "tasks", i, "data") if task.data else ("evaluation", "tasks", i), str(exc))


@_reads_files
def prompts_file_exists(sweep: SweepFile) -> Iterator[SpecProblem]:
    """The file of ``evaluation.generate`` prompts can be read before any run starts."""
    generate = getattr(sweep.spec.evaluation, "generate", None)
    if generate is not None and generate.file:
        why = _missing_file(generate.file, "text")
        if why:
            yield sweep.problem(("evaluation", "generate", "file"), why)


# --------------------------------------------------------------------------------------------
# Calibration and local files
# --------------------------------------------------------------------------------------------


def calibration_has_enough_windows(sweep: SweepFile) -> Iterator[SpecProblem]:
    """Every calibration size holds the windows each method reads (2SSP's second stage,
    BlockPruner): a run with fewer would fail after loading the model."""
    sizes = [s for _, s in _valid(sweep.samples)]
    for i, meth in sweep.methods:
        needed = getattr(meth, meth.windows_field) if meth.windows_field else 1
        if sizes and needed > min(sizes):
            yield sweep.problem(("methods", i, *([meth.windows_field] if meth.windows_field else [])),
                                f"needs {needed} calibration samples but the smallest calibration size is {min(sizes)}")


@_reads_files
def model_files_exist(sweep: SweepFile) -> Iterator[SpecProblem]:
    """A local model (``path:`` a saved folder, ``gguf:`` a file) exists, before any run starts."""
    for i, m in _valid(sweep.spec.models):
        for kind in ("path", "gguf"):
            if getattr(m, kind):
                why = _missing_file(getattr(m, kind), "model" if kind == "path" else "gguf")
                if why:
                    yield sweep.problem(("models", i, kind), why)


@_reads_files
def text_files_exist(sweep: SweepFile) -> Iterator[SpecProblem]:
    """Local calibration, evaluation and recovery text (``{path: FILE}``) exists, before any run starts."""
    sources = [(("calibration", "source"), sweep.calibration_source)]
    sources += [(("evaluation", "perplexity", i), s) for i, s in _valid(sweep.datasets)]
    sources += [(("recovery", i, "data"), r.data) for i, r in _recoveries(sweep)]
    for loc, source in sources:
        if isinstance(source, FileSource):
            why = _missing_file(source.path, "text")
            if why:
                yield sweep.problem((*loc, "path"), why)


#: Every rule, in the order their problems are reported (``finished`` then sorts them by line).
RULES: tuple[Rule, ...] = (
    models_are_distinct, methods_are_distinct, values_are_distinct, pruning_has_sparsities,
    sparsities_have_a_pruning_method, evaluation_text_is_held_out, recovery_text_is_held_out,
    recovery_labels_are_distinct, recovery_has_a_pruned_model, recovery_runs_on_one_device,
    evaluation_datasets_are_distinct,
    something_to_evaluate, tasks_are_listed_once, task_data_folder_exists, task_files_are_found,
    prompts_file_exists, calibration_has_enough_windows, model_files_exist, text_files_exist,
)


def cross_checks(spec: SweepSpec | SimpleNamespace, tree: Located, file: str,
                 check_files: bool = True) -> list[SpecProblem]:
    """Every rule's problems with ``spec`` (a sweep, or what validates of an invalid one), each at
    its line in ``tree``. ``check_files``: also the rules that look at this machine's files."""
    sweep = SweepFile(spec, tree, file, check_files)
    return [problem for rule in RULES for problem in rule(sweep)]
