"""The built-in queries a view file may name (``query: NAME``): each reads the database through an
ORM session and returns frames. They exist where plain SQL would be unwieldy or non-portable: a
pivot with a column per dataset, a standard deviation (SQLite has none everywhere), a run's layer
map built from its masks and its method's removal order, runs side by side."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from twossp.contracts import (DOWNSTREAM_ACC_MEAN, REMOVAL_DETAIL_KEYS, SPEED_DECODE_TOKENS_PER_SECOND,
                              SPEED_PREFILL_SECONDS, RunStatus, removal_record)
from twossp.dash.frame import STATE_STYLES, Column, Frame, Param
from twossp.dash.recovery import (CURVE_COLUMNS, RECOVERY_COLUMNS, SUMMARY_COLUMNS, curve_frames, recovered_runs,
                                  recovery_frames, run_recovery_frames)
from twossp.db import store
from twossp.db.models import Run, Score, Sweep
from twossp.errors import ViewError, last_line
from twossp.registry import Registry

SWEEP = Param(help="only runs of this sweep (its name)")
MODEL = Param(help="only runs of this model (its label)")
#: what the views show in their ``recovery`` column for a run that was not recovered after pruning
NOT_RECOVERED = "none"


@dataclass(frozen=True)
class BuiltinQuery:
    """``run(session, params)`` -> frames; ``params``: what it accepts, with defaults; ``columns``:
    the columns its frames may have, per frame (a view file's references are checked against
    them), unless ``dynamic``: columns named by the data (a dataset, a run key) come on top."""

    run: Callable[[Session, dict[str, Any]], list[Frame]]
    params: dict[str, Param]
    columns: dict[str, tuple[str, ...]]
    description: str
    dynamic: bool = False


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive times (stored in UTC); PostgreSQL aware ones."""
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    start, end = _utc(start), _utc(end)
    return round((end - start).total_seconds(), 1) if start and end else None


def _last_line(text: str | None, limit: int = 160) -> str | None:
    return last_line(text)[:limit] or None


# ------------------------------------------------------------------------------- leaderboard
def leaderboard(session: Session, params: dict[str, Any]) -> list[Frame]:
    """Per model and target sparsity, methods side by side (seeds averaged per calibration size):
    ``metric`` per dataset and its relative change against ``baseline``; where stored, the mean
    downstream accuracy (its change in points) and the prefill and decode speed-ups. Where runs
    were recovered after pruning, a ``recovery`` column names how (``none``: as pruned), and each
    recovery is a section of its own: recovered and unrecovered runs are never averaged together."""
    metric, baseline_name, lower = params["metric"], params["baseline"], params["lower_is_better"]
    cells = [c for c in store.leaderboard_cells(session, params["sweep"], metric)
             if params["model"] in (None, c.model)]
    datasets = sorted({d for c in cells for d in c.scores})
    baseline = {(c.model, c.evaluation_key): c for c in cells if c.method == baseline_name and c.recovery is None}
    recovered = any(c.recovery is not None for c in cells)
    summarised = {key for c in cells for key in c.summaries}
    better = "lower" if lower else "higher"
    columns = [Column("model"), Column("target", format=".3g"), Column("method"),
               *([Column("recovery")] if recovered else []),
               Column("achieved", format=".3f"), Column("n", header="n"), Column("runs", hidden=True)]
    for ds in datasets:
        columns += [Column(ds, format=".2f", best=better, spread=f"{ds} sd"), Column(f"{ds} sd", hidden=True),
                    Column(f"{ds} change", header="Δ", format="change", good="negative" if lower else "positive")]
    if DOWNSTREAM_ACC_MEAN in summarised:
        columns += [Column("acc", header="acc", format=".1%", best="higher", spread="acc sd"),
                    Column("acc sd", format=".1%", hidden=True),
                    Column("acc change", header="Δ", format="+.1f", suffix=" pt", good="positive")]
    speeds = [(name, key) for name, key in (("prefill", SPEED_PREFILL_SECONDS),
                                            ("decode", SPEED_DECODE_TOKENS_PER_SECOND)) if key in summarised]
    columns += [Column(f"{name} speed-up", header=name, format=".2f", suffix="x", best="higher")
                for name, _ in speeds]

    rows = []
    for cell in cells:
        base = None if cell.method == baseline_name else baseline.get((cell.model, cell.evaluation_key))
        row: dict[str, Any] = {"model": cell.model, "target": cell.target_sparsity, "method": cell.method,
                               "achieved": cell.achieved_sparsity, "n": cell.calibration_samples,
                               "runs": cell.runs}
        if recovered:
            row["recovery"] = cell.recovery or NOT_RECOVERED
        for ds in datasets:
            value, sd, _ = cell.scores.get(ds, (None, None, 0))
            row[ds], row[f"{ds} sd"] = value, sd
            if value is not None and base is not None and ds in base.scores and base.scores[ds][0]:
                row[f"{ds} change"] = value / base.scores[ds][0] - 1
        if DOWNSTREAM_ACC_MEAN in summarised and DOWNSTREAM_ACC_MEAN in cell.summaries:
            mean, sd, _ = cell.summaries[DOWNSTREAM_ACC_MEAN]
            row["acc"], row["acc sd"] = mean, sd
            if base is not None and DOWNSTREAM_ACC_MEAN in base.summaries:
                row["acc change"] = 100 * (mean - base.summaries[DOWNSTREAM_ACC_MEAN][0])
        for name, key in speeds:
            row[f"{name} speed-up"] = _speedup(cell.summaries.get(key), base.summaries.get(key) if base else None,
                                               inverse=key == SPEED_PREFILL_SECONDS)
        rows.append(row)
    rows.sort(key=lambda r: (r["model"], r["target"], r.get("recovery", NOT_RECOVERED) != NOT_RECOVERED,
                             r.get("recovery", NOT_RECOVERED), r["method"] != baseline_name, r["method"], r["n"] or 0))
    caption = (f"{metric} per dataset ({better} is better), mean over seeds (±sd); Δ: change against {baseline_name}; "
               "n: calibration samples; achieved: sparsity counted on the pruned model")
    if DOWNSTREAM_ACC_MEAN in summarised:
        caption += "; acc: mean downstream accuracy, its Δ in points"
    if speeds:
        caption += f"; {', '.join(n for n, _ in speeds)}: speed-up against {baseline_name}"
    if recovered:
        caption += f"; recovery: how the pruned model was healed ({NOT_RECOVERED}: as pruned), a section each"
    group_by = ("model", "target", "recovery") if recovered else ("model", "target")
    return [Frame("leaderboard", "", columns, rows, group_by=group_by, caption=caption)]


def _speedup(mine: tuple | None, theirs: tuple | None, *, inverse: bool) -> float | None:
    """How many times faster: a ratio of seconds inverted, one of tokens per second as it is."""
    if not mine or not theirs or mine[0] <= 0 or theirs[0] <= 0:
        return None
    return theirs[0] / mine[0] if inverse else mine[0] / theirs[0]


# ------------------------------------------------------------------------------- sweep status
def _chosen_sweep(session: Session, name: str | None) -> Sweep | None:
    if name is None:  # the sweep most recently run
        return session.scalars(select(Sweep).order_by(Sweep.updated_at.desc(), Sweep.id.desc()).limit(1)).first()
    sweep = session.scalars(select(Sweep).where(Sweep.name == name)).first()
    if sweep is None:
        known = list(session.scalars(select(Sweep.name).order_by(Sweep.name)))
        raise ViewError(f"no sweep named {name!r} in the database; sweeps: {', '.join(known) or 'none'}")
    return sweep


def _sweep_runs(session: Session, sweep: Sweep) -> tuple[list[Run], int | None]:
    """A sweep's runs in plan order, and how many it plans. Its planned keys (stored by every
    ``sweep run``) find the cells it shares with other sweeps too; a sweep stored before them has
    its own claimed runs and a plan counted from its spec (None when that no longer validates)."""
    from twossp.plan import grid
    from twossp.spec import SweepSpec

    if sweep.planned_keys is not None:
        keys = list(dict.fromkeys(sweep.planned_keys))
        found: dict[str, Run] = {}
        for start in range(0, len(keys), 500):
            found.update((r.key, r) for r in session.scalars(select(Run).where(Run.key.in_(keys[start:start + 500]))))
        return [found[k] for k in keys if k in found], len(keys)
    runs = list(session.scalars(select(Run).where(Run.sweep_id == sweep.id).order_by(Run.id)))
    try:
        return runs, len(grid(SweepSpec.model_validate(sweep.spec)))
    except Exception:  # noqa: BLE001 - a sweep stored by another twossp version: its plan is not ours to count
        return runs, None


def sweep_status(session: Session, params: dict[str, Any]) -> list[Frame]:
    """A sweep's runs by state (with the runs it plans that no driver has claimed yet), and its runs
    with their state, attempts, elapsed time and, for a failed run, its error: every unfinished or
    failed one, and the latest completed ones up to ``limit`` rows in all."""
    if params["limit"] < 0:
        raise ViewError(f"--param limit={params['limit']}: a number of runs, 0 for all")
    sweep = _chosen_sweep(session, params["sweep"])
    if sweep is None:
        return [Frame("states", "no sweep in the database", [Column("state"), Column("runs")], [])]
    runs, planned = _sweep_runs(session, sweep)
    recovered = any(run.recovery is not None for run in runs)
    now = datetime.now(timezone.utc)
    counts: dict[str, int] = defaultdict(int)
    rows = []
    for run in runs:
        state = RunStatus(run.status).value
        counts[state] += 1
        running = run.status == RunStatus.RUNNING
        rows.append({"key": run.key, "model": run.model, "method": run.method, "target": run.target_sparsity,
                     "n": run.calibration_samples, "seed": run.seed, "state": state, "attempts": run.attempts,
                     "started": _utc(run.started_at),
                     "elapsed s": _seconds(run.started_at, now if running else run.finished_at),
                     "heartbeat s ago": _seconds(run.heartbeat_at, now) if running else None,
                     "error": _last_line(run.error) if run.status == RunStatus.FAILED else None})
        if recovered:
            rows[-1]["recovery"] = run.recovery or NOT_RECOVERED
    hidden = 0
    if params["limit"] and len(rows) > params["limit"]:  # every unfinished or failed run, then the latest completed
        completed = sorted((r for r in rows if r["state"] == RunStatus.COMPLETED),
                           key=lambda r: r["started"] or datetime.min.replace(tzinfo=timezone.utc))
        keep = max(params["limit"] - (len(rows) - len(completed)), 0)
        shown = {id(r) for r in completed[len(completed) - keep:]} if keep else set()
        hidden = len(completed) - keep
        rows = [r for r in rows if r["state"] != RunStatus.COMPLETED or id(r) in shown]
    order = [s.value for s in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.RUNNING, RunStatus.PENDING)]
    states = [{"state": s, "runs": counts[s]} for s in order if counts[s]]
    if planned is not None and planned > len(runs):
        states.append({"state": "not started", "runs": planned - len(runs)})
    states.append({"state": "total", "runs": max(planned or 0, len(runs))})
    colors = STATE_STYLES
    title = f"sweep {sweep.name}"
    if sweep.cancel_requested_at is not None:
        title += " (cancel requested)"
    return [
        Frame("states", title, [Column("state", colors=colors), Column("runs")], states),
        Frame("runs", f"runs of sweep {sweep.name}",
              [Column("key"), Column("model"), Column("method"), Column("target", format=".3g"),
               *([Column("recovery")] if recovered else []), Column("n"), Column("seed"),
               Column("state", colors=colors), Column("attempts"), Column("started"), Column("elapsed s", format=".1f"),
               Column("heartbeat s ago", format=".0f"), Column("error")], rows,
              caption=f"{hidden} earlier completed run(s) not listed (--param limit=0 lists every run)" if hidden else ""),
    ]


# ------------------------------------------------------------------------------- one run
def find_run(session: Session, prefix: str) -> Run:
    """The run whose key is ``prefix`` or starts with it (one, or ``ViewError``)."""
    prefix = str(prefix).strip()
    if not prefix:
        raise ViewError("a run key (or a prefix of one) is needed")
    found = store.runs_with_prefix(session, prefix, 6, selectinload(Run.scores), selectinload(Run.timings),
                                   selectinload(Run.layer_masks), selectinload(Run.generations),
                                   selectinload(Run.memory), selectinload(Run.recovery_steps),
                                   selectinload(Run.sweep))
    if not found:
        raise ViewError(f"no run with a key starting {prefix!r} (twossp runs lists them)")
    if len(found) > 1:
        shown = ", ".join(r.key for r in found[:5]) + (", ..." if len(found) > 5 else "")
        raise ViewError(f"more than one run has a key starting {prefix!r} ({shown}): give more of the key")
    return found[0]


def _fields(name: str, title: str, pairs: list[tuple[str, Any]]) -> Frame:
    return Frame(name, title, [Column("field"), Column("value", align="left")],
                 [{"field": f, "value": v} for f, v in pairs if v is not None])


def _method_options(run: Run) -> str | None:
    method = dict((run.spec or {}).get("method") or {})
    method.pop("name", None)
    return ", ".join(f"{k}={v}" for k, v in sorted(method.items())) or None


def layer_map(run: Run) -> tuple[Frame, Frame]:
    """One row per decoder layer: attention kept or removed (and at which step), the FFN neurons
    kept as a bar of the dense width; and the removal steps with the calibration perplexity after
    each (2SSP's stage 2, BlockPruner)."""
    record = removal_record(run.details)
    steps, ordered, after = record.steps, record.ordered, record.calibration_perplexity
    step_of: dict[tuple[str, int], int] = {}
    for number, (kind, layer) in enumerate(steps, start=1):
        step_of.setdefault((kind, layer), number)
    rows = []
    for mask in run.layer_masks:
        block = ("block", mask.layer) in step_of
        attention_step = step_of.get(("attention", mask.layer)) if ordered else None
        ffn_step = step_of.get(("ffn", mask.layer)) if ordered else None
        ffn_state = "removed" if mask.ffn_kept == 0 else ("narrowed" if mask.ffn_kept < mask.ffn_width else "kept")
        rows.append({"layer": mask.layer, "attention": "kept" if mask.attention_kept else "removed",
                     "attention step": attention_step,
                     "ppl after": after[attention_step - 1] if attention_step and attention_step <= len(after) else None,
                     "ffn": "block removed" if block else ffn_state, "ffn kept": mask.ffn_kept,
                     "ffn width": mask.ffn_width, "ffn step": ffn_step})
    states = {"kept": "green", "removed": "red", "narrowed": "yellow", "block removed": "red"}
    columns = [Column("layer"), Column("attention", colors=states), Column("attention step", header="step", missing=""),
               Column("ppl after", header="calib ppl after", format=".2f", missing=""), Column("ffn", colors=states),
               Column("ffn kept", header="ffn neurons kept", bar="ffn width"), Column("ffn width", hidden=True)]
    if any(r["ffn step"] for r in rows):
        columns.append(Column("ffn step", header="ffn step", missing=""))
    kept = sum(m.attention_kept for m in run.layer_masks)
    caption = (f"{kept} of {len(rows)} attentions kept; FFN neurons kept {sum(m.ffn_kept for m in run.layer_masks):,} "
               f"of {sum(m.ffn_width for m in run.layer_masks):,}")
    layers = Frame("layers", f"layer map of {run.key} ({run.method} {run.target_sparsity:g})", columns, rows,
                   caption=caption)
    order = [{"step": n, "removed": kind, "layer": layer, "calib ppl after": after[n - 1] if n <= len(after) else None}
             for n, (kind, layer) in enumerate(steps, start=1)] if ordered else []
    removal = Frame("removal", "removal order (calibration perplexity after each step)",
                    [Column("step"), Column("removed"), Column("layer"), Column("calib ppl after", format=".2f")],
                    order)
    return layers, removal


#: details shown elsewhere in the run view (tasks and tokens with the scores, orders in the layer map, a
#: recovered run's recovery in its own section)
_SHOWN_ELSEWHERE = ("tasks", "evaluation_tokens", "recovery", "recovered_from", *REMOVAL_DETAIL_KEYS)


def _details(run: Run) -> Frame:
    """What the run's method recorded (``runs.details``): its budget, its search's figures, one
    level of nesting flattened, long lists counted rather than listed."""
    pairs: list[tuple[str, Any]] = []

    def add(name: str, value: Any) -> None:
        if isinstance(value, list) and len(value) > 32:
            pairs.append((name, f"{len(value)} values"))
        elif isinstance(value, list):
            pairs.append((name, ", ".join(str(v) for v in value)))
        else:
            pairs.append((name, value))

    for name, value in (run.details or {}).items():
        if name in _SHOWN_ELSEWHERE:
            continue
        if isinstance(value, dict):
            for inner, item in value.items():
                add(f"{name}.{inner}", item)
        else:
            add(name, value)
    return _fields("details", f"what {run.method} recorded", pairs)


def run_detail(session: Session, params: dict[str, Any]) -> list[Frame]:
    """A run's spec, provenance, timings, scores, layer map, removal order and generations; for a
    recovered run, what it was recovered from and how, and its loss curve in a few rows."""
    run = find_run(session, params["key"])
    spec = run.spec or {}
    calibration = spec.get("calibration") or {}
    evaluation = spec.get("evaluation") or {}
    overview = _fields("run", f"run {run.key}", [
        ("key", run.key), ("sweep", run.sweep.name if run.sweep else None), ("model", run.model),
        ("method", run.method), ("options", _method_options(run)), ("target sparsity", run.target_sparsity),
        ("recovery", run.recovery),
        ("achieved sparsity", run.achieved_sparsity),
        ("decoder parameters", f"{run.params_pruned:,} of {run.params_dense:,}"
         if run.params_pruned is not None and run.params_dense else None),
        ("calibration", f"{calibration.get('samples')} x {calibration.get('seq_len')} tokens of "
                        f"{_source(calibration.get('source'))}, seed {calibration.get('seed')}" if calibration else None),
        ("evaluation", ", ".join(_source(s) for s in evaluation.get("perplexity") or []) +
         f" ({evaluation.get('seq_len')}-token windows)" if evaluation else None),
        ("tasks", ", ".join(t.get("name", "?") for t in evaluation.get("tasks") or []) or None),
        ("dtype", (spec.get("runtime") or {}).get("dtype")), ("status", str(run.status)),
        ("error", _last_line(run.error, 400)), ("evaluation key", run.evaluation_key),
    ])
    versions = run.versions or {}
    provenance = _fields("provenance", "provenance", [
        ("host", run.host), ("device", run.device), ("driver", run.owner), ("attempts", run.attempts),
        ("created", _utc(run.created_at)), ("started", _utc(run.started_at)), ("finished", _utc(run.finished_at)),
        ("elapsed s", _seconds(run.started_at, run.finished_at)), ("calibration sha256", run.calibration_sha256),
        *[(f"version {name}", value) for name, value in sorted(versions.items())],
    ])
    timings = Frame("timings", "timings", [Column("phase"), Column("seconds", format=".2f")],
                    [{"phase": t.phase, "seconds": t.seconds} for t in sorted(run.timings, key=lambda t: t.id)])
    scores = Frame("scores", "scores", [Column("dataset"), Column("metric"), Column("value", format=".6g")],
                   [{"dataset": s.dataset, "metric": s.metric, "value": s.value}
                    for s in sorted(run.scores, key=lambda s: (s.dataset, s.metric))])
    memory = [memory_frame(run)] if run.memory or run.placement else []
    frames = [overview, provenance, _details(run), *run_recovery_frames(run), timings, *memory, scores]
    if run.layer_masks:
        layers, removal = layer_map(run)
        frames += [layers] + ([removal] if removal.rows else [])
    if run.generations:
        frames.append(Frame("generations", "generations (greedy)",
                            [Column("position", header="#"), Column("prompt"), Column("output"),
                             Column("new_tokens", header="tokens")],
                            [{"position": g.position, "prompt": g.prompt, "output": g.output,
                              "new_tokens": g.new_tokens} for g in run.generations]))
    if run.exports:
        frames.append(exports_frame(run))
    return frames


#: ``run_memory.metric`` of the plan's estimate of a run's peak on a device (phase ``plan``)
ESTIMATE_METRIC = "estimate_bytes"


def binary_size(count: int | None) -> str | None:
    """Bytes as people read them: GiB from one GiB up, MiB below."""
    if count is None:
        return None
    return f"{count / 2**30:,.2f} GiB" if count >= 2**30 else f"{count / 2**20:,.1f} MiB"


def memory_frame(run: Run) -> Frame:
    """The run's peak memory per phase and device (``run_memory``), in the order measured, each
    beside the plan's estimate of the whole run's peak on that device where the plan made one; a
    device the plan estimated but nothing measured is a row of its own. The title says where the
    run's blocks lived (``runs.placement``)."""
    estimates = {m.device: m.bytes for m in run.memory if m.metric == ESTIMATE_METRIC}
    measured = [m for m in run.memory if m.metric != ESTIMATE_METRIC]
    rows = [{"phase": m.phase, "device": m.device, "metric": m.metric, "bytes": m.bytes} for m in measured]
    rows += [{"phase": "plan", "device": device, "metric": ESTIMATE_METRIC, "bytes": None}
             for device in estimates if device not in {m.device for m in measured}]
    for row in rows:
        estimate = estimates.get(row["device"])
        row.update({"peak": binary_size(row["bytes"]), "estimate bytes": estimate, "estimate": binary_size(estimate),
                    "of estimate": row["bytes"] / estimate if row["bytes"] is not None and estimate else None})
    columns = [Column("phase"), Column("device"), Column("metric"), Column("bytes", hidden=True),
               Column("peak", align="right"), Column("estimate bytes", hidden=True),
               Column("estimate", header="plan's estimate", align="right"), Column("of estimate", format=".0%")]
    title = "memory" + (f" (placement: {run.placement})" if run.placement else "")
    caption = "plan's estimate: the peak the plan expected on the device over the whole run" if estimates else ""
    return Frame("memory", title, columns, rows, caption=caption)


def exports_frame(run: Run) -> Frame:
    """The models ``twossp export`` or the sweep's ``save_to:`` wrote from ``run``, with what llama.cpp
    measured on each (GGUF with ``--evaluate``)."""
    def measured(export: Any, metric: str) -> float | None:  # the first dataset's perplexity, the speeds
        return next((s.value for s in sorted(export.scores, key=lambda s: s.id) if s.metric == metric), None)

    rows = [{"format": e.format, "type": e.tensor_type, "architecture": e.architecture,
             "MiB": e.size_bytes / 2**20, "perplexity": measured(e, "perplexity"),
             "prompt tok/s": measured(e, "prompt_tokens_per_second"),
             "gen tok/s": measured(e, "generation_tokens_per_second"), "path": e.path,
             "created": _utc(e.created_at)} for e in run.exports]
    columns = [Column("format"), Column("type"), Column("architecture", header="arch"),
               Column("MiB", format=",.1f"), Column("perplexity", format=".4g", header="llama.cpp ppl"),
               Column("prompt tok/s", format=",.0f"), Column("gen tok/s", format=",.1f"), Column("path"),
               Column("created")]
    return Frame("exports", "exports (llama.cpp figures with --evaluate)", columns, rows)


def _source(source: Any) -> str:
    if isinstance(source, dict):
        return str(source.get("path") or source)
    return str(source)


# ------------------------------------------------------------------------------- ablation
def ablation(session: Session, params: dict[str, Any]) -> list[Frame]:
    """Mean ± sd over seeds of ``metric`` per (model, method and its options, target, calibration
    size, dataset, evaluation settings), with the mean downstream accuracy where stored: how much
    calibration is enough, for the pruned models as they are (recovered runs are left out: the
    recovery view compares them)."""
    query = (select(Run.id, Run.model, Run.method, Run.spec, Run.target_sparsity, Run.calibration_samples, Run.seed,
                    Run.evaluation_key, Score.dataset, Score.metric, Score.value)
             .join(Score, Score.run_id == Run.id)
             .where(Run.status == RunStatus.COMPLETED, Run.calibration_samples.is_not(None), Run.recovery.is_(None))
             .where((Score.metric == params["metric"]) | ((Score.dataset == DOWNSTREAM_ACC_MEAN[0]) &
                                                           (Score.metric == DOWNSTREAM_ACC_MEAN[1]))))
    if params["sweep"]:
        query = query.join(Sweep, Sweep.id == Run.sweep_id).where(Sweep.name == params["sweep"])
    if params["model"]:
        query = query.where(Run.model == params["model"])
    values: dict[tuple, dict[int, tuple[int | None, float]]] = defaultdict(dict)  # cell -> run -> (seed, value)
    accuracy: dict[tuple, dict[int, float]] = defaultdict(dict)                     # cell without dataset -> run
    for run_id, model, method, spec, target, n, seed, evaluation, dataset, metric, value in session.execute(query):
        options = ", ".join(f"{k}={v}" for k, v in sorted(((spec or {}).get("method") or {}).items()) if k != "name")
        cell = (model, method, options, target, n, evaluation)
        if (dataset, metric) == DOWNSTREAM_ACC_MEAN:
            accuracy[cell][run_id] = value
        else:
            values[(*cell, dataset)][run_id] = (seed, value)
    rows = []
    for (model, method, options, target, n, evaluation, dataset), by_run in values.items():
        found = [v for _, v in by_run.values()]
        acc = list(accuracy.get((model, method, options, target, n, evaluation), {}).values())
        rows.append({"model": model, "method": method, "options": options or None, "target": target,
                     "dataset": dataset, "evaluation key": evaluation, "n": n,
                     "seeds": len({seed for seed, _ in by_run.values()}), "runs": len(found),
                     "mean": statistics.fmean(found), "sd": statistics.stdev(found) if len(found) > 1 else None,
                     "min": min(found), "max": max(found), "acc": statistics.fmean(acc) if acc else None,
                     "acc sd": statistics.stdev(acc) if len(acc) > 1 else None})
    rows.sort(key=lambda r: (r["model"], r["method"], r["options"] or "", r["target"], r["dataset"],
                             r["evaluation key"] or "", r["n"]))
    better = "lower" if params["lower_is_better"] else "higher"
    columns = [Column("model"), Column("method"), Column("options", hidden=True), Column("target", format=".3g"),
               Column("dataset"), Column("evaluation key", hidden=True), Column("n", header="calibration n"),
               Column("seeds"), Column("runs", hidden=True),
               Column("mean", header=params["metric"], format=".2f", best=better, spread="sd"),
               Column("sd", format=".2f", hidden=True), Column("min", format=".2f"), Column("max", format=".2f")]
    if any(r["acc"] is not None for r in rows):
        columns += [Column("acc", format=".1%", best="higher", spread="acc sd"),
                    Column("acc sd", format=".1%", hidden=True)]
    return [Frame("ablation", "", columns, rows,
                  group_by=("model", "method", "options", "target", "dataset", "evaluation key"),
                  caption=f"mean ±sd over seeds; bold: the best calibration size of each group "
                          f"(the {'lowest' if params['lower_is_better'] else 'highest'} {params['metric']})")]


# ------------------------------------------------------------------------------- compare
def compare(session: Session, params: dict[str, Any]) -> list[Frame]:
    """Two or more runs side by side: what each removed, its scores, its timings."""
    keys = params["runs"] or []
    if len(keys) < 2:
        raise ViewError("compare needs two or more runs: --param runs=KEY1,KEY2[,...] (key prefixes work)")
    runs = [find_run(session, key) for key in keys]
    names = [r.key for r in runs]
    if len(set(names)) < len(names):
        raise ViewError(f"the same run was named twice ({', '.join(keys)})")

    def side_by_side(name: str, title: str, first: list[Column], rows: list[dict[str, Any]], fmt: str | None) -> Frame:
        return Frame(name, title, first + [Column(k, format=fmt) for k in names], rows)

    what = {
        "model": [r.model for r in runs], "method": [r.method for r in runs],
        "options": [_method_options(r) for r in runs], "target": [r.target_sparsity for r in runs],
        "achieved": [r.achieved_sparsity for r in runs], "status": [str(r.status) for r in runs],
        "calibration n": [r.calibration_samples for r in runs], "seed": [r.seed for r in runs],
        "attention removed": [[m.layer for m in r.layer_masks if not m.attention_kept] or None for r in runs],
        "ffn removed": [[m.layer for m in r.layer_masks if m.ffn_kept == 0] or None for r in runs],
        "ffn neurons kept": [f"{sum(m.ffn_kept for m in r.layer_masks):,} of {sum(m.ffn_width for m in r.layer_masks):,}"
                             if r.layer_masks else None for r in runs],
        "removal order": [" ".join(f"{kind[0]}{layer}" for kind, layer in record.steps)
                          if record.ordered and record.steps else None
                          for record in (removal_record(r.details) for r in runs)],
        "elapsed s": [_seconds(r.started_at, r.finished_at) for r in runs],
    }
    if any(r.recovery is not None for r in runs):  # after the target, as the other views place it
        items = list(what.items())
        at = [name for name, _ in items].index("target") + 1
        what = dict([*items[:at], ("recovery", [r.recovery or NOT_RECOVERED for r in runs]), *items[at:]])
    overview = side_by_side("runs", "runs side by side", [Column("field")],
                            [{"field": f, **dict(zip(names, v))} for f, v in what.items()], None)
    score_keys = sorted({(s.dataset, s.metric) for r in runs for s in r.scores})
    by_run = [{(s.dataset, s.metric): s.value for s in r.scores} for r in runs]
    scores = side_by_side("scores", "scores", [Column("dataset"), Column("metric")],
                          [{"dataset": d, "metric": m, **{k: v.get((d, m)) for k, v in zip(names, by_run)}}
                           for d, m in score_keys], ".6g")
    phases = list(dict.fromkeys(t.phase for r in runs for t in sorted(r.timings, key=lambda t: t.id)))
    timing = [{t.phase: t.seconds for t in r.timings} for r in runs]
    timings = side_by_side("timings", "timings (seconds)", [Column("phase")],
                           [{"phase": p, **{k: v.get(p) for k, v in zip(names, timing)}} for p in phases], ".2f")
    return [overview, scores, timings]


# ------------------------------------------------------------------------------- recovery
def recovery(session: Session, params: dict[str, Any]) -> list[Frame]:
    """Recovery after pruning, per model, target sparsity, perplexity dataset and recovery: the
    methods' perplexity before and after against dense, the share of the gap closed in log space,
    the mean downstream accuracy before and after, and the recovery's tokens and seconds."""
    return recovery_frames(session, params["sweep"], params["model"])


def recovery_curve(session: Session, params: dict[str, Any]) -> list[Frame]:
    """The recovered runs' loss curves (one run's with ``key``): the loss, its KD and CE parts, the
    learning rate, gradient norm and held-out perplexity against the step, a line per run."""
    if params["key"]:
        run = find_run(session, params["key"])
        if run.recovery is None:
            raise ViewError(f"run {run.key} was not recovered after pruning: it has no loss curve")
        runs = [run] if run.recovery_steps else []
    else:
        runs = recovered_runs(session, params["sweep"], params["model"])
    return curve_frames(runs, params["points"])


QUERIES: Registry[BuiltinQuery] = Registry("built-in query", {
    "leaderboard": BuiltinQuery(leaderboard, {
        "sweep": SWEEP, "model": MODEL, "metric": Param(default="perplexity", help="the score compared per dataset"),
        "baseline": Param(default="dense", help="the method every change is measured against"),
        "lower_is_better": Param(type="boolean", default=True, help="whether lower values of the metric win")},
        {"leaderboard": ("model", "target", "method", "recovery", "achieved", "n", "runs", "acc", "acc sd",
                         "acc change", "prefill speed-up", "decode speed-up")},
        leaderboard.__doc__ or "", dynamic=True),
    "sweep_status": BuiltinQuery(sweep_status, {"sweep": Param(help="the sweep's name (default: the one run last)"),
                                                "limit": Param(type="integer", default=50,
                                                               help="runs listed at most: every unfinished or failed "
                                                                    "one, then the latest completed (0: all)")},
                                 {"states": ("state", "runs"),
                                  "runs": ("key", "model", "method", "target", "recovery", "n", "seed", "state",
                                           "attempts", "started", "elapsed s", "heartbeat s ago", "error")},
                                 sweep_status.__doc__ or ""),
    "run_detail": BuiltinQuery(run_detail, {"key": Param(required=True, help="a run key or a unique prefix of one")},
                               {"run": ("field", "value"), "provenance": ("field", "value"),
                                "details": ("field", "value"),
                                "timings": ("phase", "seconds"),
                                "memory": ("phase", "device", "metric", "bytes", "peak", "estimate bytes", "estimate",
                                           "of estimate"),
                                "scores": ("dataset", "metric", "value"),
                                "layers": ("layer", "attention", "attention step", "ppl after", "ffn", "ffn kept",
                                           "ffn width", "ffn step"),
                                "removal": ("step", "removed", "layer", "calib ppl after"),
                                "generations": ("position", "prompt", "output", "new_tokens"),
                                "recovery": ("field", "value"),
                                "recovery_curve": CURVE_COLUMNS},
                               run_detail.__doc__ or ""),
    "ablation": BuiltinQuery(ablation, {
        "sweep": SWEEP, "model": MODEL, "metric": Param(default="perplexity", help="the score summarised"),
        "lower_is_better": Param(type="boolean", default=True, help="whether lower values of the metric win")},
        {"ablation": ("model", "method", "options", "target", "dataset", "evaluation key", "n", "seeds", "runs",
                      "mean", "sd", "min", "max", "acc", "acc sd")},
        ablation.__doc__ or ""),
    "compare": BuiltinQuery(compare, {"runs": Param(type="keys", required=True,
                                                    help="two or more run keys or prefixes, comma-separated")},
                            {"runs": ("field",), "scores": ("dataset", "metric"), "timings": ("phase",)},
                            compare.__doc__ or "", dynamic=True),
    "recovery": BuiltinQuery(recovery, {"sweep": SWEEP, "model": MODEL}, {"recovery": RECOVERY_COLUMNS},
                             recovery.__doc__ or ""),
    "recovery_curve": BuiltinQuery(recovery_curve, {
        "sweep": SWEEP, "model": MODEL,
        "key": Param(help="only this recovered run (its key or a unique prefix of one)"),
        "points": Param(type="integer", default=20, help="rows per curve, the loss averaged between them "
                                                         "(0: every step)")},
        {"curve": CURVE_COLUMNS, "runs": SUMMARY_COLUMNS}, recovery_curve.__doc__ or ""),
})
