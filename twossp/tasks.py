"""The downstream task registry: the lm-evaluation-harness tasks a sweep can evaluate, and where
each task's data is found when it comes from local files as its authors publish them.

A task always runs with the harness's **own** definition (prompts, choices, targets, metrics): its
built-in YAML. With local data, twossp converts the published files into the records the built-in
reads from the hub and runs a generated config that includes the built-in one and overrides only
where the data comes from (``twossp.evaluate.harness``). Torch-free: ``sweep validate`` finds a
task's files (or reports the paths it tried) without importing lm-eval.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from twossp.errors import DataUnavailable
from twossp.registry import Lazy, Registry

#: The 57 MMLU subjects (Hendrycks et al., 2021), as the harness names them (``mmlu_<subject>``).
MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)


@dataclass(frozen=True)
class Files:
    """One split of a task as published: its records file and, where answers are kept apart (PIQA,
    WinoGrande), its label file. Each is a list of names to try in the task's folder, first found
    wins; ``{subject}`` stands for an MMLU subject."""

    config_key: str                 # the split setting of the built-in config that reads it
    split: str                      # the split's name in the generated config
    records: tuple[str, ...]
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Task:
    name: str                       # the harness's task name (for MMLU: its group)
    builtin: str                    # the built-in YAML under lm_eval/tasks ({subject} for MMLU)
    hub: str                        # the hub dataset the built-in reads (repository:configuration)
    folders: tuple[str, ...]        # the task's folder names to try under ``evaluation.task_data``
    evaluated: Files                # the split the built-in scores
    fewshot: Files                  # the split its few-shot examples come from
    convert: Lazy                   # published record -> the hub record the built-in reads
    description: str
    subjects: tuple[str, ...] = ()  # a group's subtasks (MMLU); empty for a single task

    def subtask(self, subject: str) -> str:
        return f"{self.name}_{subject}"


def _arc(name: str, folder: str) -> Task:
    return Task(
        name=f"arc_{name.lower()}", builtin=f"arc/arc_{name.lower()}.yaml", hub=f"allenai/ai2_arc:{folder}",
        folders=(f"arc_{name.lower()}", folder),
        evaluated=Files("test_split", "test", (f"{folder}-Test.jsonl", f"{folder}/{folder}-Test.jsonl")),
        fewshot=Files("training_split", "train", (f"{folder}-Train.jsonl", f"{folder}/{folder}-Train.jsonl")),
        convert=Lazy("twossp.evaluate.harness_data:arc"),
        description=f"AI2 ARC-{name} (Clark et al., 2018): AI2's JSONL, answer keys A-D or 1-4")


TASKS: Registry[Task] = Registry("task", {task.name: task for task in (
    _arc("Easy", "ARC-Easy"),
    _arc("Challenge", "ARC-Challenge"),
    Task(name="hellaswag", builtin="hellaswag/hellaswag.yaml", hub="Rowan/hellaswag", folders=("hellaswag",),
         evaluated=Files("validation_split", "validation", ("hellaswag_val.jsonl", "val.jsonl", "dev.jsonl")),
         fewshot=Files("training_split", "train", ("hellaswag_train.jsonl", "train.jsonl")),
         convert=Lazy("twossp.evaluate.harness_data:hellaswag"),
         description="HellaSwag (Zellers et al., 2019): the authors' JSONL (label an integer)"),
    Task(name="piqa", builtin="piqa/piqa.yaml", hub="baber/piqa", folders=("piqa",),
         evaluated=Files("validation_split", "validation", ("valid.jsonl", "dev.jsonl"),
                         ("valid-labels.lst", "dev-labels.lst")),
         fewshot=Files("training_split", "train", ("train.jsonl",), ("train-labels.lst",)),
         convert=Lazy("twossp.evaluate.harness_data:piqa"),
         description="PIQA (Bisk et al., 2020): the authors' JSONL plus a label file"),
    Task(name="winogrande", builtin="winogrande/default.yaml", hub="allenai/winogrande:winogrande_xl",
         folders=("winogrande",),
         evaluated=Files("validation_split", "validation", ("dev.jsonl",), ("dev-labels.lst",)),
         fewshot=Files("training_split", "train", ("train_xl.jsonl",), ("train_xl-labels.lst",)),
         convert=Lazy("twossp.evaluate.harness_data:winogrande"),
         description="WinoGrande 1.1 (Sakaguchi et al., 2020), the xl split: JSONL plus a label file"),
    Task(name="mmlu", builtin="mmlu/default/mmlu_{subject}.yaml", hub="cais/mmlu", folders=("mmlu",),
         evaluated=Files("test_split", "test", ("test/{subject}_test.csv", "test/{subject}.csv")),
         fewshot=Files("fewshot_split", "dev", ("dev/{subject}_dev.csv", "dev/{subject}.csv")),
         convert=Lazy("twossp.evaluate.harness_data:mmlu"), subjects=MMLU_SUBJECTS,
         description="MMLU (Hendrycks et al., 2021): one CSV per subject (answer A-D or 0-3), its "
                     "aggregate weighted by subject size as the harness's own group computes it"),
)})


@dataclass(frozen=True)
class Located:
    """The files one (sub)task reads: split name -> (records, labels or None)."""

    task: str
    files: dict[str, tuple[str, str | None]]


def _first(folder: Path, names: tuple[str, ...], subject: str, tried: list[str]) -> Path | None:
    for name in names:
        path = folder / name.format(subject=subject)
        if path.is_file():
            return path
        tried.append(str(path))
    return None


def locate(task: Task, folder: str | Path, subjects: tuple[str, ...] | None = None,
           fewshot: bool = False) -> list[Located]:
    """The published files of ``task`` (each subject of a group) in ``folder``, those of its few-shot
    split too when ``fewshot``; ``DataUnavailable`` naming the task and every path tried."""
    folder = Path(folder)
    splits = [task.evaluated] + ([task.fewshot] if fewshot else [])
    found: list[Located] = []
    for subject in (subjects or task.subjects) or ("",):
        files: dict[str, tuple[str, str | None]] = {}
        for split in splits:
            tried: list[str] = []
            records = _first(folder, split.records, subject, tried)
            labels = _first(folder, split.labels, subject, tried) if split.labels else None
            if records is None or (split.labels and labels is None):
                name = task.subtask(subject) if subject else task.name
                raise DataUnavailable(f"task {name}: no {split.split} data found; tried {', '.join(tried)}")
            files[split.split] = (str(records), str(labels) if labels else None)
        found.append(Located(task.subtask(subject) if subject else task.name, files))
    return found


def task_folder(task: Task, root: str | Path) -> tuple[Path | None, list[str]]:
    """The folder of ``task`` under a task-data root (its first existing folder name), and the
    folders tried."""
    tried = []
    for name in task.folders:
        path = Path(root) / name
        if path.is_dir():
            return path, tried
        tried.append(str(path))
    return None, tried


def hub_unreachable(tasks: list[Task], reason: str) -> str:
    """Why ``tasks`` cannot run from the hub here, and what to do instead."""
    names = ", ".join(f"{t.name} ({t.hub})" for t in tasks)
    return (f"task{'s' if len(tasks) > 1 else ''} {names} read{'' if len(tasks) > 1 else 's'} the harness's "
            f"datasets from the Hugging Face hub, which cannot be reached ({reason}); give a task `data: FOLDER` "
            "or the sweep `evaluation.task_data: FOLDER` with the files as their authors publish them")


__all__ = ["Files", "Located", "MMLU_SUBJECTS", "TASKS", "Task", "hub_unreachable", "locate", "task_folder"]
