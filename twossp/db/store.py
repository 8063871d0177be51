"""Writes and reads of the result database. Each result lands in one transaction: a run is either
``running`` or ``completed``/``failed`` with all its scores, timings and masks."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, selectinload

from twossp.db.models import LayerMaskRow, Run, Score, Sweep, Timing
from twossp.plan import RunSpec
from twossp.runtime.worker import RunResult
from twossp.spec import SweepSpec


def upsert_sweep(session: Session, spec: SweepSpec, path: str | None) -> Sweep:
    row = session.scalar(select(Sweep).where(Sweep.name == spec.name))
    data = spec.model_dump(mode="json")
    if row is None:
        row = Sweep(name=spec.name, path=path, spec=data)
        session.add(row)
    else:
        row.path, row.spec, row.updated_at = path, data, datetime.now(timezone.utc)
    session.flush()
    return row


def run_statuses(session: Session, keys: Iterable[str]) -> dict[str, str]:
    keys = list(keys)
    out: dict[str, str] = {}
    for start in range(0, len(keys), 500):
        chunk = keys[start:start + 500]
        out.update(session.execute(select(Run.key, Run.status).where(Run.key.in_(chunk))).tuples().all())
    return out


def claim(session: Session, sweep: Sweep, run: RunSpec) -> None:
    """Mark ``run`` as running (creating its row if new), clearing what a previous attempt left."""
    row = session.scalar(select(Run).where(Run.key == run.key))
    now = datetime.now(timezone.utc)
    if row is None:
        row = Run(key=run.key, sweep_id=sweep.id, model=run.model.label, method=run.method.name,
                  target_sparsity=run.sparsity or 0.0, spec=run.model_dump(mode="json"))
        session.add(row)
    else:
        for child in (Score, Timing, LayerMaskRow):
            session.execute(delete(child).where(child.run_id == row.id))
    row.status, row.error, row.started_at, row.finished_at = "running", None, now, None
    row.calibration_samples = run.calibration.samples if run.calibration else None
    row.seed = run.calibration.seed if run.calibration else None


def release(session: Session, keys: Iterable[str]) -> None:
    """Runs claimed but not finished (the driver was interrupted) go back to pending."""
    for row in session.scalars(select(Run).where(Run.key.in_(list(keys)), Run.status == "running")):
        row.status = "pending"


def record(session: Session, run: RunSpec, result: RunResult) -> Run:
    row = session.scalar(select(Run).where(Run.key == run.key))
    if row is None:
        raise LookupError(f"run {run.key} was never claimed")
    row.status, row.error = result.status, result.error
    row.started_at = result.started_at or row.started_at
    row.finished_at = result.finished_at or datetime.now(timezone.utc)
    row.achieved_sparsity = result.achieved_sparsity
    row.params_dense, row.params_pruned = result.params_dense, result.params_pruned
    row.host, row.device, row.versions = result.host, result.device, result.versions or None
    row.details = result.details or None
    if result.status == "completed":
        row.scores = [Score(dataset=d, metric=m, value=v) for d, m, v in result.scores]
        row.timings = [Timing(phase=p, seconds=s) for p, s in result.timings.items()]
        row.layer_masks = [LayerMaskRow(layer=m.layer, attention_kept=m.attention_kept, ffn_kept=m.ffn_kept,
                                        ffn_width=m.ffn_width, ffn_mask=m.ffn_mask) for m in result.masks]
    return row


def completed_runs(session: Session, sweep: str | None = None) -> list[Run]:
    query = select(Run).where(Run.status == "completed").options(selectinload(Run.scores))
    if sweep:
        query = query.join(Sweep).where(Sweep.name == sweep)
    return list(session.scalars(query))
