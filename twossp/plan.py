"""Pure planning: a validated sweep expands into runs, each keyed by a hash of its normalised spec.

The key covers everything that determines a run's numbers (weights, method and its parameters,
sparsity, calibration, evaluation, dtype) and nothing that does not (sweep name, model label,
resources, device, thread count), so the same cell in two sweep files is computed once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from pydantic import Field

from twossp.contracts import BlockCounts
from twossp.errors import BudgetError, DataUnavailable
from twossp.fingerprint import fingerprint_file
from twossp.methods import SHARED_STEPS, method_of
from twossp.spec import AnyMethod, EvaluationSpec, ModelSpec, RecoverySpec, RuntimeSpec, SweepSpec, TaskSpec, TextSource
from twossp.spec import source_key
from twossp.strict import Strict
from twossp.tasks import locate


class CalibrationRun(Strict):
    source: TextSource
    samples: int = Field(ge=1)
    seq_len: int
    seed: int


def task_data_identity(task: TaskSpec, task_data: str | None) -> dict[str, Any]:
    """Which data a task's numbers come from: the harness's hub dataset, or a content fingerprint of
    each published file it reads (so a copy elsewhere shares its results, an edited file does not)."""
    folder = task.folder(task_data)
    if folder is None:
        return {"hub": task.task.hub}
    try:
        located = locate(task.task, folder, tuple(task.subjects or ()), fewshot=task.num_fewshot > 0)
        return {"files": {found.task: {split: [fingerprint_file(f) if f else None for f in files]
                                       for split, files in found.files.items()} for found in located}}
    except DataUnavailable:  # reported by validation; named by the folder meanwhile
        return {"missing": folder}


def _file_identity(path: str) -> str:
    try:
        return fingerprint_file(path)
    except DataUnavailable:
        return f"missing:{path}"


def _digest(data: Any) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class FrozenPrompts(Strict):
    """A sweep's generation prompts as read at plan time."""

    file: str | None           # the prompts file's fingerprint (``missing:PATH`` where it was absent); None: no file
    texts: list[str] | None    # the inline prompts, then the file's; None: the file could not be read


class _Keyed(Strict):
    """A planned unit of work on one model's weights (a run, a shared step), keyed by a hash of what
    determines its numbers (``identity``). Everything the key covers is frozen at plan time, so the
    key is computed once and never changes under a run. Each subclass declares its fields (the
    order of ``runs.spec``'s JSON): ``model``, ``runtime`` and ``weights`` among them, the weights
    as planned (``ModelSpec.identity``: a content fingerprint, a hub commit), frozen so the key never
    changes under a run and the worker and ``export`` can tell whether the weights they find are
    still these."""

    def identity(self) -> dict[str, Any]:
        raise NotImplementedError

    @cached_property
    def key(self) -> str:
        return _digest(self.identity())

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Any:
        """A copy with ``update`` applied, keyed by its own content (not by the original's cached keys)."""
        copy = super().model_copy(update=update, deep=deep)
        for cached in ("key", "evaluation_key"):
            copy.__dict__.pop(cached, None)
        return copy

    def weights_changed(self) -> bool:
        """Whether the model's weights are no longer the ones this was planned on."""
        return self.weights is not None and self.model.identity != self.weights


class RunSpec(_Keyed):
    """Everything a worker needs to execute one run; JSON-serialisable for Ray and the database."""

    sweep: str
    model: ModelSpec
    method: AnyMethod
    sparsity: float | None = None
    calibration: CalibrationRun | None = None
    evaluation: EvaluationSpec
    runtime: RuntimeSpec
    save_to: str | None = None  # where the pruned model goes (not in the key: it changes no number)
    save_format: Literal["safetensors", "hf-stock", "gguf"] = "safetensors"
    save_type: str = "f16"      # the GGUF tensor type (``GGUF_TYPES``)
    weights: dict[str, Any] | None = None
    #: Each task's data as planned (``task_data_identity``), frozen like ``weights``.
    task_data: dict[str, Any] | None = None
    #: The generation prompts as planned (``frozen_prompts``): the prompts file's fingerprint and every
    #: prompt, frozen like ``weights``, so editing the file while a sweep runs changes neither the key
    #: nor what is asked; None: read when needed (a spec built by hand).
    prompts: FrozenPrompts | None = None
    #: how the pruned model is healed before evaluation; None: it is evaluated as pruned. A recovered
    #: run starts from its pruning run's model (``pruning_run``) rather than pruning again.
    recovery: RecoverySpec | None = None

    def evaluation_identity(self) -> dict[str, Any]:
        """What determines how a run is evaluated, and nothing else: the order datasets and tasks are
        listed in changes no score, nor does a task's batch size. Part of the run key, and hashed
        alone into ``evaluation_key``, so runs evaluated alike (a method and its dense baseline)
        share it. Tasks, speed and generations enter only when asked for, so the keys of runs that
        evaluate perplexity alone are those they always had."""
        evaluation = self.evaluation
        ident: dict[str, Any] = {
            "perplexity": sorted((source_key(s) for s in evaluation.perplexity),
                                 key=lambda k: json.dumps(k, sort_keys=True)),
            "seq_len": evaluation.seq_len,
            "max_windows": evaluation.max_windows,
        }
        if evaluation.tasks:
            data = self.task_data or plan_task_data(evaluation)
            ident["tasks"] = [{"name": t.name, "num_fewshot": t.num_fewshot, "limit": t.limit,
                               "subjects": sorted(t.subjects) if t.subjects else None, "data": data[t.name]}
                              for t in sorted(evaluation.tasks, key=lambda t: t.name)]
        if evaluation.speed:
            ident["speed"] = evaluation.speed.model_dump()
        if evaluation.generate:
            generate = evaluation.generate
            file = self.prompts.file if self.prompts else (_file_identity(generate.file) if generate.file else None)
            ident["generate"] = {"prompts": generate.prompts, "max_new_tokens": generate.max_new_tokens,
                                 "file": file}
        return ident

    def identity(self) -> dict[str, Any]:
        ident: dict[str, Any] = {
            "model": self.weights or self.model.identity,
            "trust_remote_code": self.model.trust_remote_code,
            "method": self.method.model_dump(),
            "sparsity": self.sparsity,
            "dtype": self.runtime.dtype,
            "evaluation": self.evaluation_identity(),
        }
        if self.calibration:
            ident["calibration"] = {**self.calibration.model_dump(), "source": source_key(self.calibration.source)}
        if self.recovery:
            ident["recovery"] = self.recovery.identity()
        return ident

    @property
    def pruning_run(self) -> "RunSpec":
        """The run whose pruned model this one starts from: itself without recovery."""
        return self.model_copy(update={"recovery": None})

    @cached_property
    def evaluation_key(self) -> str:
        return _digest(self.evaluation_identity())

    @property
    def label(self) -> str:
        parts = [self.model.label, self.method.name]
        if self.sparsity is not None:
            parts.append(f"s={self.sparsity:g}")
        if self.calibration:
            parts.append(f"n={self.calibration.samples}")
            parts.append(f"seed={self.calibration.seed}")
        if self.recovery:
            parts.append(f"+{self.recovery.label}")
        return " ".join(parts)

    def generation_prompts(self) -> list[str]:
        """The prompts the run answers: those frozen at plan time, else read now."""
        assert self.evaluation.generate is not None
        if self.prompts is not None and self.prompts.texts is not None:
            return self.prompts.texts
        return self.evaluation.generate.read_prompts()  # a spec built by hand, or a file unreadable when planned

    def preview(self, counts: BlockCounts) -> str:
        """What this run will remove, from the dense model's parameter counts alone (its method's
        plan preview); raises ``BudgetError`` when the run could not succeed."""
        entry = method_of(self.method)
        if self.sparsity is None or entry.preview is None:
            return "-"
        return entry.preview(self.method, self.sparsity, counts)


def frozen_prompts(evaluation: EvaluationSpec) -> FrozenPrompts | None:
    """The generation prompts to freeze into a sweep's runs (None: no generation). A prompts file
    that cannot be read now is keyed as it is (absent: ``missing:PATH``) and its prompts left to the
    run, which reads it and fails as it would have."""
    generate = evaluation.generate
    if generate is None:
        return None
    file = _file_identity(generate.file) if generate.file else None
    try:
        texts: list[str] | None = generate.read_prompts()
    except DataUnavailable:
        texts = None
    return FrozenPrompts(file=file, texts=texts)


def plan_task_data(evaluation: EvaluationSpec) -> dict[str, Any]:
    return {t.name: task_data_identity(t, evaluation.task_data) for t in evaluation.tasks}


Cell = tuple[ModelSpec, AnyMethod, "float | None", "CalibrationRun | None", "RecoverySpec | None"]


def grid(spec: SweepSpec) -> list[Cell]:
    """The grid's cells in plan order, without their identities (nothing is read): per model, one
    cell for a method that does not prune (dense), else one per sparsity x calibration size x seed x
    recovery, the unrecovered cell first and always (it is the recovered cells' starting point)."""
    recoveries = [None, *(r for r in spec.recovery if r is not None)]
    cells: list[Cell] = []
    for model in spec.models:
        for method in spec.methods:
            if not method_of(method).prunes:
                cells.append((model, method, None, None, None))
                continue
            for sparsity in spec.sparsities:
                for samples in spec.calibration.samples:
                    for seed in spec.seeds:
                        calibration = CalibrationRun(source=spec.calibration.source, samples=samples,
                                                     seq_len=spec.calibration.seq_len, seed=seed)
                        cells += [(model, method, sparsity, calibration, recovery) for recovery in recoveries]
    return cells


def plan_sweep(spec: SweepSpec) -> list[RunSpec]:
    """Expand the grid. The dense run takes no sparsity, calibration, seed or recovery: one per model."""
    evaluation = spec.evaluation.model_copy(update={"seq_len": spec.eval_seq_len})
    task_data = plan_task_data(evaluation) if evaluation.tasks else None
    prompts = frozen_prompts(evaluation)
    identities: dict[int, Any] = {}  # a model's weights are fingerprinted once
    runs: list[RunSpec] = []
    save = ({"save_to": spec.save_to.path, "save_format": spec.save_to.format, "save_type": spec.save_to.type or "f16"}
            if spec.save_to else {})
    for model, method, sparsity, calibration, recovery in grid(spec):
        if id(model) not in identities:
            identities[id(model)] = model.identity
        runs.append(RunSpec(sweep=spec.name, model=model, method=method, evaluation=evaluation, runtime=spec.runtime,
                            **save, weights=identities[id(model)], task_data=task_data, prompts=prompts,
                            sparsity=sparsity, calibration=calibration, recovery=recovery))
    return runs


class StepSpec(_Keyed):
    """A shared step (``methods.SharedStep``) as planned: everything a worker needs to compute it,
    keyed, like a run, by what determines its result: the model's weights, the dtype, the calibration
    windows and the parameters that matter."""

    kind: str
    model: ModelSpec
    weights: dict[str, Any] | None = None
    runtime: RuntimeSpec
    calibration: CalibrationRun
    params: dict[str, Any] = Field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.weights or self.model.identity,
                "trust_remote_code": self.model.trust_remote_code, "dtype": self.runtime.dtype,
                "calibration": {**self.calibration.model_dump(), "source": source_key(self.calibration.source)},
                "params": self.params}

    @property
    def label(self) -> str:
        params = " ".join(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
                          for name, value in sorted(self.params.items()))
        return " ".join(part for part in (self.model.label, self.kind, f"n={self.calibration.samples}",
                                          f"seed={self.calibration.seed}", params) if part)


@dataclass
class SharedPlan:
    """The shared steps of a set of runs: each step by key, in plan order, and the step each run takes."""

    steps: dict[str, StepSpec] = field(default_factory=dict)
    needs: dict[str, str] = field(default_factory=dict)  # run key -> step key

    def step_of(self, run: RunSpec) -> StepSpec | None:
        key = self.needs.get(run.key)
        return self.steps[key] if key else None

    def dependents(self, key: str) -> list[str]:
        return [run for run, step in self.needs.items() if step == key]


def plan_shared(runs: list[RunSpec]) -> SharedPlan:
    """Group the runs by the shared step their method names, keyed by content; a step two or more
    runs need is planned (one run alone gains nothing: it computes its own). A step computed up to a
    target (``SharedStep.to_target``) reaches the highest sparsity of its runs."""
    groups: dict[str, tuple[StepSpec, list[RunSpec]]] = {}
    for run in runs:
        kind = method_of(run.method).shared
        if kind is None or run.calibration is None or run.sparsity is None or run.recovery:
            continue
        step = StepSpec(kind=kind, model=run.model, weights=run.weights, runtime=run.runtime,
                        calibration=run.calibration, params=SHARED_STEPS[kind].params(run.method))
        groups.setdefault(step.key, (step, []))[1].append(run)
    plan = SharedPlan()
    for step, members in groups.values():
        if len(members) < 2:
            continue
        if SHARED_STEPS[step.kind].to_target:
            step = step.model_copy(update={"params": {**step.params,
                                                      "sparsity": max(run.sparsity for run in members)}})
        plan.steps[step.key] = step
        plan.needs.update({run.key: step.key for run in members})
    return plan


#: The step a recovered run takes: its pruning run's pruned model, as the layer masks the database
#: holds (never computed as a step: the pruning run is a run of the grid, done before it).
PRUNED_MODEL = "pruned model"


def plan_starts(runs: list[RunSpec]) -> SharedPlan:
    """Each recovered run's starting point: a ``PRUNED_MODEL`` step per pruning run, which every
    recovery setting of it takes (the driver reads its masks from the database)."""
    plan = SharedPlan()
    for run in runs:
        if run.recovery is None or run.calibration is None:
            continue
        step = StepSpec(kind=PRUNED_MODEL, model=run.model, weights=run.weights, runtime=run.runtime,
                        calibration=run.calibration, params={"run": run.pruning_run.key})
        plan.steps.setdefault(step.key, step)
        plan.needs[run.key] = step.key
    return plan


@dataclass
class WorkEstimate:
    """Estimated decoder-layer forwards of pruning (``methods.Work``; evaluation not counted): per
    run (shareable, own; None where a model's counts or a method's estimate is unknown, or the run
    cannot succeed), per shared step, and over the runs with an estimate, with and without sharing."""

    runs: dict[str, tuple[int, int] | None] = field(default_factory=dict)
    steps: dict[str, int | None] = field(default_factory=dict)
    unshared: int = 0
    shared: int = 0

    @property
    def estimated(self) -> int:
        """How many runs the totals cover."""
        return sum(1 for work in self.runs.values() if work is not None)


def _work(run: RunSpec, counts: dict[str, BlockCounts], sparsity: float | None = None) -> tuple[int, int] | None:
    if run.recovery:  # it starts from its pruning run's model
        return 0, 0
    work, model_counts = method_of(run.method).work, counts.get(run.model.label)
    if work is None or model_counts is None:
        return None
    try:
        return work(run.method, sparsity if sparsity is not None else run.sparsity or 0.0, model_counts,
                    run.calibration.samples if run.calibration else 0)
    except BudgetError:  # reported by preflight
        return None


def estimate_work(runs: list[RunSpec], shared: SharedPlan, counts: dict[str, BlockCounts]) -> WorkEstimate:
    """``counts``: the dense block counts by model label (from config.json; absent: unknown). A
    step's work is the shareable part of its first run's, at the step's own sparsity if it has one."""
    estimate = WorkEstimate(runs={run.key: _work(run, counts) for run in runs})
    by_key = {run.key: run for run in runs}
    for key, step in shared.steps.items():
        work = _work(by_key[shared.dependents(key)[0]], counts, step.params.get("sparsity"))
        estimate.steps[key] = work[0] if work else None
    for key, work in estimate.runs.items():
        if work is None:
            continue
        step = shared.needs.get(key)
        estimate.unshared += sum(work)
        estimate.shared += work[1] + (0 if step and estimate.steps.get(step) is not None else work[0])
    estimate.shared += sum(work for work in estimate.steps.values() if work is not None)
    return estimate


__all__ = ["PRUNED_MODEL", "CalibrationRun", "Cell", "FrozenPrompts", "RunSpec", "SharedPlan", "StepSpec", "WorkEstimate", "estimate_work",
           "frozen_prompts", "grid", "plan_shared", "plan_starts", "plan_sweep", "plan_task_data", "task_data_identity"]
