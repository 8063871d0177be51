"""What a sweep's runs will do and whether they can succeed, from local files alone (no weights, no
torch, no database): each model's ``config.json`` is checked against the family registry and each
run's method preview is computed from its parameter counts. ``sweep validate``, ``sweep plan`` and
``sweep run`` ask this before any work, so a run that could not succeed is refused up front."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from twossp.contracts import BlockCounts
from twossp.data.hub import unreachable_tasks
from twossp.errors import BudgetError, TwosspError, UnsupportedArchitecture
from twossp.families import config_block_counts, family_of
from twossp.methods import method_of
from twossp.plan import RunSpec
from twossp.runtime.export import export_refusal
from twossp.runtime.loading import config_path


@dataclass
class Preflight:
    previews: dict[str, str] = field(default_factory=dict)   # run key -> what it will remove ("?" unknown)
    problems: list[str] = field(default_factory=list)        # why runs could not succeed
    unknown: list[str] = field(default_factory=list)         # models whose config.json is not local
    #: what can be checked only where the runs execute: tasks reading the hub, unreachable from here
    remote: list[str] = field(default_factory=list)
    counts: dict[str, BlockCounts] = field(default_factory=dict)  # model label -> its dense block counts
    configs: dict[str, dict] = field(default_factory=dict)  # model label -> its config.json, where counted


def preflight(runs: list[RunSpec]) -> Preflight:
    report = Preflight()
    if runs:
        evaluation = runs[0].evaluation  # every run of a sweep is evaluated alike
        unreachable = unreachable_tasks(evaluation.tasks, evaluation.task_data)
        report.remote += [unreachable] if unreachable else []
    configs: dict[str, dict | None] = {}
    for run in runs:
        label = run.model.label
        if label not in configs:
            configs[label] = _config(run, report)
        config = configs[label]
        if config is None:
            report.previews[run.key] = "?"
            continue
        if run.save_to and method_of(run.method).prunes:
            why = export_refusal(config, run.method, run.save_format)
            if why:
                report.problems.append(f"{run.label}: `save_to` asks for {run.save_format}, which cannot be "
                                       f"written: {why}")
        try:
            counts = report.counts[label] = config_block_counts(config)
            report.configs[label] = config
            report.previews[run.key] = run.preview(counts)
        except BudgetError as exc:
            report.previews[run.key] = "cannot succeed"
            report.problems.append(f"{run.label}: {exc}")
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            report.previews[run.key] = "cannot succeed"
            report.problems.append(f"{run.label}: the model's config.json is incomplete or invalid "
                                   f"({type(exc).__name__}: {exc})")
    return report


def _config(run: RunSpec, report: Preflight) -> dict | None:
    """The model's parsed config.json, or None (not local, or a problem recorded)."""
    path = config_path(run.model)
    if path is None:
        report.unknown.append(run.model.label)
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        report.problems.append(f"model {run.model.label}: {path} is not a readable JSON file ({exc})")
        return None
    if not isinstance(config, dict):
        report.problems.append(f"model {run.model.label}: {path} is not a JSON object")
        return None
    try:
        family_of(config)
    except UnsupportedArchitecture as exc:
        report.problems.append(f"model {run.model.label} ({path}): {exc}")
        return None
    except TwosspError as exc:
        report.problems.append(f"model {run.model.label}: {exc}")
        return None
    return config
