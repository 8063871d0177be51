"""Writes and reads of the result database. Each result lands in one transaction: a run is either
``running`` or ``completed``/``failed`` with all its scores, timings, masks and generations (and, either
way, the memory it measured and a recovered run's loss curve)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, selectinload

from twossp.contracts import (DOWNSTREAM_ACC_MEAN, SPEED_DECODE_TOKENS_PER_SECOND, SPEED_PREFILL_SECONDS, LayerMask,
                              RecoveryStep, RunResult, RunStatus, StepResult)
from twossp.errors import last_line
from twossp.db.models import (Export, ExportScore, Generation, LayerMaskRow, RecoveryStepRow, Run, RunMemory, Score,
                              SharedStepRow, Sweep, Timing, utcnow)
from twossp.plan import RunSpec, StepSpec
from twossp.spec import SweepSpec


def upsert_sweep(session: Session, spec: SweepSpec, path: str | None, planned: Iterable[str] | None = None) -> Sweep:
    """The sweep's row, created or refreshed; a cancellation asked earlier is cleared (running the
    sweep again is a new intent). ``planned``: the keys of the runs its plan expands to (kept when
    None). Two drivers starting the same new sweep at once both get the row."""
    data = spec.model_dump(mode="json")
    row = session.scalar(select(Sweep).where(Sweep.name == spec.name))
    if row is None:
        try:
            with session.begin_nested():
                row = Sweep(name=spec.name, path=path, spec=data)
                session.add(row)
        except IntegrityError:  # another driver created it first
            row = session.scalars(select(Sweep).where(Sweep.name == spec.name)).one()
    row.path, row.spec, row.updated_at, row.cancel_requested_at = path, data, utcnow(), None
    if planned is not None:
        row.planned_keys = list(planned)
    session.flush()
    return row


def run_statuses(session: Session, keys: Iterable[str]) -> dict[str, str]:
    keys = list(keys)
    out: dict[str, str] = {}
    for start in range(0, len(keys), 500):
        chunk = keys[start:start + 500]
        out.update(session.execute(select(Run.key, Run.status).where(Run.key.in_(chunk))).tuples().all())
    return out


def claim(session: Session, sweep_id: int, run: RunSpec, owner: str, *, rerun_failed: bool,
          stale_before: datetime, owner_is_dead: Callable[[str | None], bool] = lambda owner: False) -> bool:
    """Atomically make ``run`` ``running`` under ``owner``, if nobody else may hold it: new, pending,
    failed (with ``rerun_failed``), or ``running`` with a heartbeat older than ``stale_before`` or an
    owner that ``owner_is_dead`` (its driver died). False when it is completed or held by a live
    driver. What a previous attempt left (scores, timings, masks, generations, memory and placement, a
    loss curve) is cleared in the same transaction. A new row names its recovery's label (NULL: the
    run is not recovered), which views group by.
    The run's ``evaluation_key`` is the plan's (``RunSpec.evaluation_key``): the one identity the run
    key also hashes."""
    now = utcnow()
    values = dict(status=RunStatus.RUNNING, owner=owner, heartbeat_at=now, attempts=Run.attempts + 1, error=None,
                  started_at=now, finished_at=None, sweep_id=sweep_id,
                  calibration_samples=run.calibration.samples if run.calibration else None,
                  seed=run.calibration.seed if run.calibration else None,
                  evaluation_key=run.evaluation_key, placement=None)
    row_id, holder = session.execute(select(Run.id, Run.owner).where(Run.key == run.key)).one_or_none() or (None, None)
    if row_id is None:
        try:
            with session.begin_nested():
                session.add(Run(key=run.key, model=run.model.label, method=run.method.name,
                                target_sparsity=run.sparsity or 0.0, spec=run.model_dump(mode="json"),
                                recovery=run.recovery.label if run.recovery else None,
                                **{**values, "attempts": 1}))
            return True
        except IntegrityError:  # another driver inserted it between our read and our write
            row_id = session.scalar(select(Run.id).where(Run.key == run.key))
    abandoned = or_(Run.heartbeat_at.is_(None), Run.heartbeat_at < stale_before)
    if holder and owner_is_dead(holder):
        abandoned = or_(abandoned, Run.owner == holder)
    claimable = or_(
        Run.status == RunStatus.PENDING,
        and_(Run.status == RunStatus.FAILED, rerun_failed),
        and_(Run.status == RunStatus.RUNNING, abandoned),
    )
    taken = session.execute(update(Run).where(Run.id == row_id, claimable).values(**values)
                            .execution_options(synchronize_session=False))
    if taken.rowcount != 1:
        return False
    for child in (Score, Timing, LayerMaskRow, Generation, RunMemory, RecoveryStepRow):
        session.execute(delete(child).where(child.run_id == row_id))
    return True


def run_rows(session: Session, status: str | None = None, *, with_scores: bool = False) -> list[Run]:
    """Every run (of ``status``, when given), in the order they were first claimed; ``with_scores``
    loads their scores too (one more query), to be read after the session ends."""
    query = select(Run).order_by(Run.id)
    if status:
        query = query.where(Run.status == RunStatus(status))
    if with_scores:
        query = query.options(selectinload(Run.scores))
    return list(session.scalars(query))


def runs_with_prefix(session: Session, prefix: str, limit: int, *options: Any) -> list[Run]:
    """At most ``limit`` runs whose key starts with ``prefix`` (a whole key included), with the
    loader ``options`` given. The prefix is literal text: its % and _ are no LIKE wildcards."""
    query = select(Run).where(Run.key.startswith(prefix, autoescape=True)).order_by(Run.id).limit(limit)
    return list(session.scalars(query.options(*options)))


def heartbeat(session: Session, owner: str, sweep_id: int) -> bool:
    """Refresh the heartbeat of every run ``owner`` holds; True if the sweep was asked to cancel."""
    session.execute(update(Run).where(Run.owner == owner, Run.status == RunStatus.RUNNING)
                    .values(heartbeat_at=utcnow()).execution_options(synchronize_session=False))
    return session.scalar(select(Sweep.cancel_requested_at).where(Sweep.id == sweep_id)) is not None


def add_attempt(session: Session, key: str, owner: str) -> None:
    """A run restarted by its executor (its node died) counts one more attempt."""
    session.execute(update(Run).where(Run.key == key, Run.owner == owner)
                    .values(attempts=Run.attempts + 1).execution_options(synchronize_session=False))


def request_cancel(session: Session, name: str) -> int | None:
    """Ask the drivers of sweep ``name`` to stop; the number of its runs now running, or None if
    there is no such sweep."""
    row = session.scalar(select(Sweep).where(Sweep.name == name))
    if row is None:
        return None
    row.cancel_requested_at = utcnow()
    return len(session.scalars(select(Run.id).where(Run.sweep_id == row.id, Run.status == RunStatus.RUNNING)).all())


def release(session: Session, owner: str, keys: Iterable[str]) -> None:
    """Runs ``owner`` claimed but did not finish (interrupted, cancelled) go back to pending."""
    session.execute(update(Run).where(Run.key.in_(list(keys)), Run.owner == owner, Run.status == RunStatus.RUNNING)
                    .values(status=RunStatus.PENDING, heartbeat_at=None).execution_options(synchronize_session=False))


def record(session: Session, run: RunSpec, result: RunResult, owner: str) -> Run | None:
    """Store a finished run in the caller's transaction: all of it, or (on error) nothing. None if
    ``owner`` no longer holds the run (another driver took it over as stale): the result is dropped
    rather than written twice."""
    row = session.scalar(select(Run).where(Run.key == run.key))
    if row is None:
        raise LookupError(f"run {run.key} was never claimed")
    if row.owner != owner or row.status != RunStatus.RUNNING:
        return None
    row.status, row.error = result.status, result.error
    row.started_at = result.started_at or row.started_at
    row.finished_at = result.finished_at or utcnow()
    row.achieved_sparsity = result.achieved_sparsity
    row.params_dense, row.params_pruned = result.params_dense, result.params_pruned
    row.host, row.device, row.versions = result.host, result.device, result.versions or None
    row.details = result.details or None
    row.calibration_sha256 = result.calibration_sha256
    row.shared_step = result.shared_step
    row.placement = result.placement
    row.memory = memory_rows(result.memory)  # a failed run's too: how far it got before running out, say
    row.recovery_steps = recovery_rows(result.recovery)  # likewise: how far its training got before it failed
    if result.status == RunStatus.COMPLETED:
        row.scores = [Score(dataset=d, metric=m, value=v, tokens_sha256=result.token_hashes.get(d))
                      for d, m, v in result.scores]
        row.timings = [Timing(phase=p, seconds=s) for p, s in result.timings.items()]
        row.layer_masks = [LayerMaskRow(layer=m.layer, attention_kept=m.attention_kept, ffn_kept=m.ffn_kept,
                                        ffn_width=m.ffn_width, ffn_mask=m.ffn_mask) for m in result.masks]
        row.generations = [Generation(position=i, prompt=prompt, output=output, new_tokens=new_tokens)
                           for i, (prompt, output, new_tokens) in enumerate(result.generations)]
        row.exports.extend(new_export(**export) for export in result.exports)
    return row


def memory_rows(measured: Iterable[tuple[str, str, str, int]]) -> list[RunMemory]:
    """``RunResult.memory`` as rows, in the order measured; a (phase, device, metric) measured twice
    keeps its largest value (each is a peak, and the table holds one row of each)."""
    peaks: dict[tuple[str, str, str], int] = {}
    for phase, device, metric, value in measured:
        key = (phase, device, metric)
        peaks[key] = max(int(value), peaks.get(key, int(value)))
    return [RunMemory(phase=phase, device=device, metric=metric, bytes=value)
            for (phase, device, metric), value in peaks.items()]


def recovery_rows(steps: Iterable[RecoveryStep]) -> list[RecoveryStepRow]:
    """``RunResult.recovery`` (a recovered run's loss curve) as rows, one per optimiser step. A step
    reported twice keeps its last report (the table holds one row per step). A loss that is not
    finite (a training that diverged, and failed) is stored as NULL: SQLite has no NaN, and turns one
    into a NULL that would then refuse the whole result."""
    last = {step.step: step for step in steps}
    return [RecoveryStepRow(step=s.step, loss=_finite(s.loss), kd_loss=_finite(s.kd_loss), ce_loss=_finite(s.ce_loss),
                            lr=s.lr, grad_norm=_finite(s.grad_norm), tokens=s.tokens, seconds=s.seconds,
                            heldout_perplexity=_finite(s.heldout_perplexity))
            for s in sorted(last.values(), key=lambda s: s.step)]


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def add_shared_step(session: Session, step: StepSpec, result: StepResult) -> SharedStepRow | None:
    """Keep a completed shared step's result; None when another driver kept it first (same key,
    same result) or the step failed (a failure is not kept: the next sweep computes it again)."""
    import io

    import torch

    if result.status != RunStatus.COMPLETED or session.scalar(select(SharedStepRow.id).where(
            SharedStepRow.key == step.key)) is not None:
        return None
    buffer = io.BytesIO()
    torch.save(result.payload, buffer)
    row = SharedStepRow(key=step.key, kind=step.kind, label=step.label, identity=step.identity(),
                        calibration_sha256=result.calibration_sha256, payload=buffer.getvalue(), seconds=result.seconds,
                        timings=result.timings, host=result.host, device=result.device, versions=result.versions)
    session.add(row)
    return row


def shared_results(session: Session, keys: Iterable[str]) -> dict[str, StepResult]:
    """The kept results of the shared steps ``keys`` that have one, read back as ``StepResult``."""
    import io

    import torch

    rows = session.scalars(select(SharedStepRow).where(SharedStepRow.key.in_(list(keys)))).all()
    return {row.key: StepResult(key=row.key, kind=row.kind, status=RunStatus.COMPLETED,
                                payload=torch.load(io.BytesIO(row.payload), weights_only=True),
                                calibration_sha256=row.calibration_sha256, timings=row.timings or {},
                                host=row.host, device=row.device, versions=row.versions or {}, stored=True)
            for row in rows}


def pruned_models(session: Session, steps: dict[str, StepSpec]) -> dict[str, StepResult]:
    """The starting points of recovered runs (``plan.plan_starts``), read back as ``StepResult``: per
    step, its pruning run's layer masks (payload ``{"run": key, "masks": [LayerMask, ...]}``), or a
    failure saying why there are none (the pruning run failed, or is not stored)."""
    keys = {step.params["run"] for step in steps.values()}
    rows = {row.key: row for row in session.scalars(select(Run).where(Run.key.in_(list(keys))))}
    results = {}
    for key, step in steps.items():
        run = rows.get(step.params["run"])
        if run is not None and run.status == RunStatus.COMPLETED:
            masks = [LayerMask(m.layer, m.attention_kept, m.ffn_width, m.ffn_mask) for m in run.layer_masks]
            results[key] = StepResult(key=key, kind=step.kind, status=RunStatus.COMPLETED,
                                      payload={"run": run.key, "masks": masks}, stored=True)
            continue
        why = (f"its pruning run {step.params['run']} is not stored" if run is None else
               f"its pruning run {run.key} is {run.status.value}" + (f": {last_line(run.error, '?')}" if run.error else ""))
        results[key] = StepResult(key=key, kind=step.kind, status=RunStatus.FAILED, error=why, stored=True)
    return results


def add_export(session: Session, key: str, save_format: str, path: str, size_bytes: int, *,
               tensor_type: str | None = None, architecture: str | None = None, sha256: str | None = None,
               engine: str | None = None, details: dict[str, Any] | None = None,
               scores: Iterable[tuple[str, str, float]] = ()) -> Export:
    """Record a file ``twossp export`` wrote from run ``key``, with what the engine measured on it."""
    run = session.scalar(select(Run).where(Run.key == key))
    if run is None:
        raise LookupError(f"no run {key}")
    export = new_export(save_format, path, size_bytes, tensor_type=tensor_type, architecture=architecture,
                        sha256=sha256, engine=engine, details=details, scores=scores)
    run.exports.append(export)
    return export


def new_export(save_format: str, path: str, size_bytes: int, *, tensor_type: str | None = None,
               architecture: str | None = None, sha256: str | None = None, engine: str | None = None,
               details: dict[str, Any] | None = None, scores: Iterable[tuple[str, str, float]] = ()) -> Export:
    """An ``exports`` row (and its engine's figures), not yet attached to a run."""
    return Export(format=save_format, path=path, size_bytes=size_bytes, tensor_type=tensor_type,
                  architecture=architecture, sha256=sha256, engine=engine, details=details,
                  scores=[ExportScore(dataset=d, metric=m, value=v) for d, m, v in scores])


#: Score rows every leaderboard cell summarises beside its per-dataset metric: downstream accuracy
#: and the speed figures compared against the baseline.
SUMMARIES: tuple[tuple[str, str], ...] = (DOWNSTREAM_ACC_MEAN, SPEED_PREFILL_SECONDS, SPEED_DECODE_TOKENS_PER_SECOND)

#: mean, sample standard deviation (None for one value) and number of values, over a cell's seeds
Stat = tuple[float, float | None, int]


@dataclass
class BoardCell:
    """One leaderboard row: the completed runs of one (model, target sparsity, method, calibration
    size, evaluation settings, recovery), seeds aggregated. ``recovery``: the recovery's label, None
    for runs that were not recovered (they are never averaged with recovered ones)."""

    model: str
    target_sparsity: float
    method: str
    calibration_samples: int | None
    evaluation_key: str | None
    recovery: str | None
    runs: int
    achieved_sparsity: float | None                                # mean over the runs
    scores: dict[str, Stat] = field(default_factory=dict)          # dataset -> Stat of the board's metric
    summaries: dict[tuple[str, str], Stat] = field(default_factory=dict)  # (dataset, metric) in SUMMARIES -> Stat


def leaderboard_cells(session: Session, sweep: str | None, metric: str) -> list[BoardCell]:
    """Completed runs aggregated in the database (two GROUP BY queries over plain columns, no JSON
    and no ORM objects), so the leaderboard stays fast on tens of thousands of runs: per cell, its
    runs with their ``SUMMARIES`` rows, then the scores of ``metric`` per dataset."""
    cell = (Run.model, Run.target_sparsity, Run.method, Run.calibration_samples, Run.evaluation_key, Run.recovery)
    width = len(cell)

    def scoped(query):  # noqa: ANN001, ANN202
        query = query.where(Run.status == RunStatus.COMPLETED)
        if sweep:
            query = query.join(Sweep, Sweep.id == Run.sweep_id).where(Sweep.name == sweep)
        return query.group_by(*cell)

    # A run has at most one row of each summary (unique run_id, dataset, metric), so joining them to
    # the runs is one index lookup per run each and multiplies no row.
    per_cell = select(*cell, func.count(Run.id), func.avg(Run.achieved_sparsity))
    for dataset, score_metric in SUMMARIES:
        score = aliased(Score)
        per_cell = per_cell.add_columns(*_moments(score.value)).outerjoin(
            score, and_(score.run_id == Run.id, score.dataset == dataset, score.metric == score_metric))
    cells = {}
    for row in session.execute(scoped(per_cell)):
        found = BoardCell(*row[:width], runs=row[width], achieved_sparsity=row[width + 1])
        for i, key in enumerate(SUMMARIES):
            n, mean, squares = row[width + 2 + 3 * i:width + 5 + 3 * i]
            if n:
                found.summaries[key] = _stat(n, mean, squares)
        cells[tuple(row[:width])] = found
    per_dataset = scoped(select(*cell, Score.dataset, *_moments(Score.value))
                         .join(Score, and_(Score.run_id == Run.id, Score.metric == metric))).group_by(Score.dataset)
    for *key, dataset, n, mean, squares in session.execute(per_dataset):
        cells[tuple(key)].scores[dataset] = _stat(n, mean, squares)
    return list(cells.values())


def _moments(value):  # noqa: ANN001, ANN202
    """count, mean and sum of squares: enough for the mean and sd in one GROUP BY."""
    return func.count(value), func.avg(value), func.sum(value * value)


def _stat(n: int, mean: float, squares: float) -> Stat:
    sd = math.sqrt(max(0.0, (squares - n * mean * mean) / (n - 1))) if n > 1 else None
    return mean, sd, n
