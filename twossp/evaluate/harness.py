"""Downstream accuracy through lm-evaluation-harness, on the in-memory (pruned) model.

The numbers are the harness's own: its ``HFLM`` wraps the model object with the tokenizer passed
explicitly (nothing is re-loaded from disk), and every task runs from the harness's built-in task
definition. For each task twossp writes a small config that ``include``-s the installed built-in
YAML and, when the data is local, overrides only where the data comes from (``dataset_path: json``
over files converted from the published format, ``twossp.evaluate.harness_data``). MMLU runs as a
group of its subject tasks with the aggregate the built-in ``mmlu`` group declares (accuracy
weighted by subject size). ``prepare_tasks`` writes the same folder for the ``lm_eval`` command line
(``--include_path``), so a user can check twossp's figures against the harness's own run.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from twossp.cache import cache_dir
from twossp.contracts import Progress
from twossp.errors import DataUnavailable
from twossp.evaluate.harness_data import CONVERSION_VERSION
from twossp.fingerprint import fingerprint_file
from twossp.spec import TaskSpec
from twossp.tasks import Files, Task, locate

#: The split settings of a harness task config; a generated local config sets every one of them.
_SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")


def builtin_tasks_dir() -> Path:
    """The installed harness's task folder (found without importing lm_eval)."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailable("lm-eval is not installed (pip install 'lm-eval>=0.4.13,<0.5')")
    return Path(list(spec.submodule_search_locations)[0]) / "tasks"


@dataclass
class Prepared:
    """One sweep task as the harness will run it: its name (a task, or MMLU's group), its subtasks,
    and where its data comes from (``hub: ...`` or the local folder)."""

    spec: TaskSpec
    subtasks: list[str]
    source: str


def _converted(task: Task, subject: str, records: str, labels: str | None, where: Path) -> Path:
    """The harness's records of one published split, written once per content: under ``where`` when
    it is a folder (the shared cache: the same files convert to the same path, so the datasets
    library's own cache of it is reused by every run instead of growing with each), else at
    ``where.jsonl``."""
    if where.is_dir():
        digest = hashlib.sha256(json.dumps([CONVERSION_VERSION, task.name, subject, fingerprint_file(records),
                                            fingerprint_file(labels) if labels else None]).encode()).hexdigest()
        target = where / f"{task.name}{'_' + subject if subject else ''}-{digest[:16]}.jsonl"
        if target.is_file():
            return target
    else:
        target = where.with_name(where.name + ".jsonl")
    rows = task.convert.load()(records, labels, subject)
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    partial.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    partial.replace(target)  # atomic: a concurrent run sees the whole file or none
    return target


def _config(task: Task, name: str, subject: str, files: dict[str, tuple[str, str | None]] | None,
            directory: Path, data_dir: Path | None) -> dict[str, Any]:
    builtin = builtin_tasks_dir() / task.builtin.format(subject=subject)
    if not builtin.is_file():
        raise DataUnavailable(f"task {name}: the installed lm-eval has no {builtin}")
    config: dict[str, Any] = {"include": str(builtin), "task": name}
    if files is None:  # the harness's own hub dataset
        return config
    data_files = {split: str(_converted(task, subject, records, labels, data_dir or directory / f"{name}.{split}"))
                  for split, (records, labels) in files.items()}
    used: dict[str, Files] = {task.evaluated.config_key: task.evaluated}
    if task.fewshot.split in files:
        used[task.fewshot.config_key] = task.fewshot
    config.update({"dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": data_files}})
    config.update({key: used[key].split if key in used else None for key in _SPLIT_KEYS})
    return config


def prepare_tasks(tasks: list[TaskSpec], task_data: str | None, directory: str | Path,
                  data_dir: str | Path | None = None) -> list[Prepared]:
    """Write, in ``directory``, the harness configs of ``tasks``, and their converted data there too,
    or in the folder ``data_dir`` (content-addressed, reused across calls)."""
    directory = Path(directory)
    data_dir = Path(data_dir) if data_dir else None
    directory.mkdir(parents=True, exist_ok=True)
    prepared = []
    for spec in tasks:
        task = spec.task
        folder = spec.folder(task_data)
        subjects = tuple(spec.subjects or task.subjects)
        located = (locate(task, folder, subjects, fewshot=spec.num_fewshot > 0) if folder is not None
                   else [None] * max(1, len(subjects)))
        names = []
        for subject, found in zip(subjects or ("",), located):
            name = task.subtask(subject) if subject else task.name
            config = _config(task, name, subject, found.files if found else None, directory, data_dir)
            (directory / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
            names.append(name)
        if subjects:  # the group, with the aggregate the built-in group declares
            group = yaml.safe_load((builtin_tasks_dir() / "mmlu/default/_mmlu.yaml").read_text(encoding="utf-8"))
            config = {"group": task.name, "task": names,
                      "aggregate_metric_list": group["aggregate_metric_list"], "metadata": group.get("metadata")}
            (directory / f"{task.name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        prepared.append(Prepared(spec, names if subjects else [], f"hub {task.hub}" if folder is None else folder))
    return prepared


@dataclass
class TaskScores:
    scores: list[tuple[str, str, float]] = field(default_factory=list)   # (task, metric, value)
    details: dict[str, Any] = field(default_factory=dict)                # task -> samples, version, data...

    @property
    def mean_accuracy(self) -> float | None:
        """Mean ``acc`` over the sweep's tasks (MMLU's aggregate counted once)."""
        top = {d["task"] for d in self.details.values() if d.get("top")}
        values = [v for t, m, v in self.scores if m == "acc" and t in top]
        return sum(values) / len(values) if values else None


def _metric_rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, float]]:
    """``{"arc_easy": {"acc,none": 0.6, "acc_stderr,none": 0.01, "alias": ...}}`` -> score rows; a
    filter other than ``none`` stays in the metric's name."""
    rows = []
    for task, metrics in results.items():
        for key, value in metrics.items():
            if "," not in key or isinstance(value, (str, bool, dict)) or value is None:
                continue
            metric, _, filter_name = key.partition(",")
            value = float(value)
            if math.isfinite(value):
                rows.append((task, metric if filter_name == "none" else f"{metric},{filter_name}", value))
    return rows


def evaluate_tasks(model: Any, tokenizer: Any, tasks: list[TaskSpec], task_data: str | None, device: Any,
                   workdir: str | Path, progress: Progress | None = None) -> TaskScores:
    """Run every task on the in-memory ``model`` with the harness (0-shot unless a task says
    otherwise); every metric it reports becomes a score row."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from twossp.data.hub import unreachable_tasks

    unreachable = unreachable_tasks(tasks, task_data)
    if unreachable:
        raise DataUnavailable(unreachable)
    prepared = prepare_tasks(tasks, task_data, workdir, cache_dir("tasks"))
    manager = TaskManager(include_path=str(workdir), include_defaults=False)
    out = TaskScores()
    for i, p in enumerate(prepared):
        if progress:
            progress(f"task {p.spec.name}", i, len(prepared))
        with _quiet():
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=p.spec.batch_size, device=str(device))
            result = simple_evaluate(model=lm, tasks=[p.spec.name], num_fewshot=p.spec.num_fewshot,
                                     limit=p.spec.limit, task_manager=manager, log_samples=False)
        out.scores += _metric_rows(result["results"])
        samples = {name: n["effective"] for name, n in result["n-samples"].items()}
        samples.setdefault(p.spec.name, sum(samples[s] for s in p.subtasks))  # a group: its subjects'
        for name in [p.spec.name, *p.subtasks]:
            out.details[name] = {"task": name, "top": name == p.spec.name, "data": p.source,
                                 "num_fewshot": p.spec.num_fewshot, "limit": p.spec.limit, "samples": samples[name],
                                 "version": result.get("versions", {}).get(name)}
    if progress:
        progress("tasks", len(prepared), len(prepared))
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The harness's progress bars and INFO logging would bury the sweep's own progress, and the
    ``git describe`` it runs for its report prints "fatal: not a git repository" outside a checkout:
    its output (Python's stderr and file descriptor 2) goes to a scratch file for the duration."""
    import sys
    import tempfile

    log = logging.getLogger("lm_eval")
    level = log.level
    log.setLevel(logging.ERROR)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as scratch, contextlib.redirect_stderr(io.StringIO()):
            os.dup2(scratch.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
        log.setLevel(level)


__all__ = ["Prepared", "TaskScores", "builtin_tasks_dir", "evaluate_tasks", "prepare_tasks"]
