"""What the views show of recovery after pruning (issue 22): per pruned model, its perplexity before
and after each recovery against the dense model's, with the share of the gap recovery closed; the
loss curves of the recovered runs; and, in the run view, how a run was recovered.

A recovered run (``runs.recovery``: its label) starts from the model of its pruning run, the same
run unrecovered (``details["recovery"]["from"]`` names its key): that run is its "before". Every
``details["recovery"]`` key is optional here: a run stored by another version may lack any of them.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any, Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from twossp.contracts import DOWNSTREAM_ACC_MEAN, RunStatus
from twossp.dash.frame import Column, Frame
from twossp.db.models import RecoveryStepRow, Run, Sweep
from twossp.errors import ViewError
from twossp.spec import LoraSpec

#: the score whose gap to dense recovery is measured by
PERPLEXITY = "perplexity"
#: the method every pruned model's gap is measured against
DENSE = "dense"


def gap_closed(dense: float | None, before: float | None, after: float | None) -> float | None:
    """The share of pruning's loss that recovery won back, in log perplexity (the issue's goal is
    at least half): ``(ln before - ln after) / (ln before - ln dense)``. 1 is back at dense, 0 no
    better than pruned, below 0 worse. None where a figure is missing or not positive, or where
    pruning lost nothing (no gap to close)."""
    if dense is None or before is None or after is None or min(dense, before, after) <= 0:
        return None
    gap = math.log(before) - math.log(dense)
    if gap <= 0:
        return None
    return (math.log(before) - math.log(after)) / gap


def _mean(values: Iterable[float | None]) -> float | None:
    found = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(found) if found else None


def _score(run: Run, dataset: str, metric: str) -> float | None:
    return next((s.value for s in run.scores if s.dataset == dataset and s.metric == metric), None)


def _options(run: Run) -> str:
    """The method's settings (``alpha=1.5, ...``): runs of one method with other settings are other cells."""
    method = (run.spec or {}).get("method") or {}
    return ", ".join(f"{k}={v}" for k, v in sorted(method.items()) if k != "name")


def _details(run: Run) -> dict[str, Any]:
    """The run's ``details["recovery"]``: what its recovery recorded (empty when it recorded nothing)."""
    found = (run.details or {}).get("recovery")
    return found if isinstance(found, dict) else {}


def _cell(run: Run) -> tuple:
    """What a recovered run shares with its pruning run, seed included."""
    return (run.model, run.method, _options(run), run.target_sparsity, run.calibration_samples, run.seed,
            run.evaluation_key)


# ------------------------------------------------------------------------------- before and after
RECOVERY_COLUMNS = ("model", "target", "dataset", "recovery", "method", "options", "n", "evaluation key", "runs",
                    "dense", "before", "after", "gap closed", "acc dense", "acc before", "acc after", "tokens",
                    "seconds", "trainable")


def _of(query: Any, sweep: str | None, model: str | None) -> Any:
    """``query`` (of runs) narrowed to a sweep's and a model's runs, where given."""
    if sweep:
        query = query.join(Sweep, Sweep.id == Run.sweep_id).where(Sweep.name == sweep)
    return query.where(Run.model == model) if model else query


def _runs_around(session: Session, sweep: str | None, model: str | None) -> tuple[list[Run], list[Run]]:
    """The completed recovered runs (of ``sweep`` and ``model`` where given), and the completed runs
    that were not recovered of their models, of any sweep (the befores and the dense runs: a later
    sweep's recovery starts from an earlier one's pruning)."""
    recovered = list(session.scalars(_of(select(Run).where(Run.status == RunStatus.COMPLETED,
                                                          Run.recovery.is_not(None))
                                         .options(selectinload(Run.scores)).order_by(Run.id), sweep, model)))
    unrecovered = list(session.scalars(
        select(Run).where(Run.status == RunStatus.COMPLETED, Run.recovery.is_(None),
                          Run.model.in_(sorted({r.model for r in recovered})))
        .options(selectinload(Run.scores)).order_by(Run.id))) if recovered else []
    return recovered, unrecovered


def _recovery_columns() -> list[Column]:
    return [Column("model"), Column("target", format=".3g"), Column("dataset"), Column("recovery"),
            Column("method"), Column("options", hidden=True), Column("n"),
            Column("evaluation key", hidden=True), Column("runs", hidden=True),
            Column("dense", header="dense ppl", format=".2f"),
            Column("before", header="before", format=".2f", best="lower"),
            Column("after", header="after", format=".2f", best="lower"),
            Column("gap closed", format=".0%", best="higher", good="positive"),
            Column("acc dense", format=".1%"), Column("acc before", format=".1%", best="higher"),
            Column("acc after", format=".1%", best="higher"),
            Column("tokens", format=",.0f"), Column("seconds", format=",.1f"), Column("trainable", format=".1%")]


RECOVERY_CAPTION = ("perplexity of the dense model, of the pruned model before recovery and after it (means over seeds); "
                    "gap closed: (ln before - ln after) / (ln before - ln dense), the share of what pruning lost that "
                    "recovery won back (100%: back at dense); bold: the best method of each recovery; acc: mean "
                    "downstream accuracy; tokens, seconds: the recovery's training; trainable: the share of parameters "
                    "it trained")


def recovery_frames(session: Session, sweep: str | None, model: str | None) -> list[Frame]:
    """Per model, target sparsity, perplexity dataset and recovery, the methods side by side: the
    dense model's perplexity, the pruned model's before recovery and after it (means over seeds),
    the gap closed in log space (``gap_closed``, from the means), the mean downstream accuracy of
    each where stored, and the recovery's training tokens and seconds (means over its runs)."""
    recovered, unrecovered = _runs_around(session, sweep, model)
    by_key = {r.key: r for r in unrecovered}
    by_cell: dict[tuple, list[Run]] = defaultdict(list)
    dense: dict[tuple, list[Run]] = defaultdict(list)
    for run in unrecovered:
        if run.method == DENSE:
            dense[(run.model, run.evaluation_key)].append(run)
        else:
            by_cell[_cell(run)].append(run)

    def before_of(run: Run) -> list[Run]:
        named = by_key.get(str(_details(run).get("from") or (run.details or {}).get("recovered_from") or ""))
        return [named] if named is not None else by_cell.get(_cell(run), [])

    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in recovered:
        groups[(run.model, run.method, _options(run), run.target_sparsity, run.calibration_samples,
                run.evaluation_key, run.recovery)].append(run)
    rows = []
    for (model_label, method, options, target, n, evaluation, label), runs in groups.items():
        befores = list({b.key: b for r in runs for b in before_of(r)}.values())
        denses = dense.get((model_label, evaluation), [])
        info = [_details(r) for r in runs]
        trainable = [d["trainable_params"] / d["total_params"] for d in info
                     if isinstance(d.get("trainable_params"), (int, float)) and d.get("total_params")]
        shared = {"model": model_label, "target": target, "recovery": label, "method": method,
                  "options": options or None, "n": n, "evaluation key": evaluation, "runs": len(runs),
                  "acc dense": _mean(_score(r, *DOWNSTREAM_ACC_MEAN) for r in denses),
                  "acc before": _mean(_score(r, *DOWNSTREAM_ACC_MEAN) for r in befores),
                  "acc after": _mean(_score(r, *DOWNSTREAM_ACC_MEAN) for r in runs),
                  "tokens": _mean(d.get("tokens") for d in info), "seconds": _mean(d.get("seconds") for d in info),
                  "trainable": _mean(trainable)}
        datasets = sorted({s.dataset for r in runs for s in r.scores if s.metric == PERPLEXITY})
        for dataset in datasets:
            figures = {name: _mean(_score(r, dataset, PERPLEXITY) for r in group)
                       for name, group in (("dense", denses), ("before", befores), ("after", runs))}
            rows.append({**shared, "dataset": dataset, **figures,
                         "gap closed": gap_closed(figures["dense"], figures["before"], figures["after"])})
    rows.sort(key=lambda r: (r["model"], r["target"], r["dataset"], r["recovery"], r["method"], r["options"] or "",
                             r["n"] or 0, r["evaluation key"] or ""))
    return [Frame("recovery", "", _recovery_columns(), rows,
                  group_by=("model", "target", "dataset", "recovery", "evaluation key"), caption=RECOVERY_CAPTION)]


# ------------------------------------------------------------------------------- loss curves
CURVE_COLUMNS = ("model", "method", "target", "recovery", "key", "step", "steps", "loss", "kd loss", "ce loss", "lr",
                 "grad norm", "tokens", "seconds", "heldout ppl")
SUMMARY_COLUMNS = ("key", "model", "method", "target", "recovery", "state", "steps", "tokens", "seconds",
                   "first loss", "last loss", "best heldout ppl", "best step")


def recovered_runs(session: Session, sweep: str | None, model: str | None) -> list[Run]:
    """The recovered runs that stored a loss curve (completed or failed: how far a failed one got)."""
    return list(session.scalars(_of(select(Run).where(Run.recovery.is_not(None), Run.recovery_steps.any())
                                    .options(selectinload(Run.recovery_steps)).order_by(Run.id), sweep, model)))


def thinned(steps: list[RecoveryStepRow], points: int) -> list[dict[str, Any]]:
    """A loss curve in about ``points`` rows (0: every step): evenly spaced steps, the first and
    last included, and the steps that measured the held-out perplexity where there are no more of
    those than ``points`` (at most twice as many rows, then). Each row's loss, its parts and the
    gradient norm are the means over the steps since the row before (``steps`` of them), so a noisy
    curve is smoothed rather than sampled; its learning rate, tokens, seconds and held-out
    perplexity are its own step's."""
    if points < 0 or points == 1:
        raise ViewError(f"--param points={points}: rows per curve, 2 or more (0: every step)")
    count = len(steps)
    if not points or count <= points:
        chosen = list(range(count))
    else:
        chosen_set = {round(i * (count - 1) / (points - 1)) for i in range(points)}
        evaluated = {i for i, s in enumerate(steps) if s.heldout_perplexity is not None}
        chosen = sorted(chosen_set | evaluated if len(evaluated) <= points else chosen_set)
    rows, start = [], 0
    for end in chosen:
        span, last = steps[start:end + 1], steps[end]
        rows.append({"step": last.step, "steps": len(span), "loss": _mean(s.loss for s in span),
                     "kd loss": _mean(s.kd_loss for s in span), "ce loss": _mean(s.ce_loss for s in span),
                     "lr": last.lr, "grad norm": _mean(s.grad_norm for s in span), "tokens": last.tokens,
                     "seconds": last.seconds, "heldout ppl": last.heldout_perplexity})
        start = end + 1
    return rows


def _curve_columns() -> list[Column]:
    return [Column("step"), Column("steps", hidden=True), Column("loss", format=".4f"),
            Column("kd loss", format=".4f"), Column("ce loss", format=".4f"), Column("lr", format=".3g"),
            Column("grad norm", format=".3g"), Column("tokens", format=","), Column("seconds", format=",.1f"),
            Column("heldout ppl", header="held-out ppl", format=".2f")]


def curve_frames(runs: list[Run], points: int) -> list[Frame]:
    """The loss curves of ``runs`` (``thinned`` to ``points`` rows each) in one frame, a run after
    the other, for the table and the chart (loss and held-out perplexity against the step, a line
    per run); then one row per run: its steps, tokens and seconds, first and last loss, and its best
    held-out perplexity."""
    runs = sorted(runs, key=lambda r: (r.model, r.method, r.target_sparsity, r.recovery or "", r.key))
    rows, summary = [], []
    for run in runs:
        who = {"model": run.model, "method": run.method, "target": run.target_sparsity, "recovery": run.recovery,
               "key": run.key}
        rows += [{**who, **row} for row in thinned(run.recovery_steps, points)]
        steps = run.recovery_steps
        measured = [s for s in steps if s.heldout_perplexity is not None]
        best = min(measured, key=lambda s: s.heldout_perplexity) if measured else None
        summary.append({**who, "state": RunStatus(run.status).value, "steps": len(steps),
                        "tokens": steps[-1].tokens if steps else None, "seconds": steps[-1].seconds if steps else None,
                        "first loss": steps[0].loss if steps else None, "last loss": steps[-1].loss if steps else None,
                        "best heldout ppl": best.heldout_perplexity if best else None,
                        "best step": best.step if best else None})
    who_columns = [Column("model"), Column("method"), Column("target", format=".3g"), Column("recovery")]
    every = "every step" if not points else f"at most about {points} rows a run (--param points=0: every step)"
    curve = Frame("curve", "", [*who_columns, Column("key", hidden=True), *_curve_columns()], rows,
                  group_by=("model", "method", "target", "recovery", "key"),
                  caption=f"{every}; loss, its KD and CE parts and the gradient norm: the mean over the steps since "
                          "the row before; tokens and seconds: of training so far; held-out ppl: where measured")
    states = {"completed": "green", "failed": "red"}
    runs_frame = Frame("runs", "recovered runs", [
        Column("key"), *who_columns, Column("state", colors=states), Column("steps"), Column("tokens", format=","),
        Column("seconds", format=",.1f"), Column("first loss", format=".4f"), Column("last loss", format=".4f"),
        Column("best heldout ppl", header="best held-out ppl", format=".2f"), Column("best step")], summary)
    return [curve, runs_frame]


# ------------------------------------------------------------------------------- one run
def _settings(spec: dict[str, Any]) -> list[tuple[str, Any]]:
    """A recovery's settings (the run spec's ``recovery``) as the run view lists them."""
    if not spec:
        return []
    loss = spec.get("loss")
    if loss == "kd":
        loss = f"kd (forward KL to dense, temperature {spec.get('temperature')}" + \
               (f", CE weight {spec.get('ce_weight')})" if spec.get("ce_weight") else ")")
    tune = spec.get("tune")
    if tune == "lora":
        lora = spec.get("lora") or LoraSpec().model_dump()  # none given: the defaults
        tune = f"lora r={lora.get('rank')} alpha={lora.get('alpha')}"
        if lora.get("targets"):
            tune += f" on {', '.join(lora['targets'])}"
    batch = (f"{spec.get('batch_size')} x {spec.get('accumulation')} windows of {spec.get('seq_len')} tokens"
             if spec.get("batch_size") else None)
    data = spec.get("data")
    return [("loss", loss), ("tune", tune), ("steps", spec.get("steps")),
            ("learning rate", f"{spec.get('lr')}, {spec.get('schedule')}, warm-up {spec.get('warmup')}"
             if spec.get("lr") is not None else None),
            ("batch", batch), ("data", f"{data.get('path') or data}" if isinstance(data, dict) else data),
            ("data seed", spec.get("seed")),
            ("held-out evaluation", _evaluated(spec))]


def _evaluated(spec: dict[str, Any]) -> str | None:
    every = spec.get("eval_every")
    if not every:
        return None
    steps = "every step" if every == 1 else f"every {every} steps"
    return f"{steps} on {spec.get('eval_windows')} windows" + (", best step kept" if spec.get("keep_best") else "")


#: ``details["recovery"]`` keys the run view shows in words (the rest are listed as they are)
_WORDED = ("from", "label", "loss", "tune", "steps", "tokens", "seconds", "tokens_per_second", "trainable_params",
           "total_params", "best_step", "heldout_perplexity_before")


def run_recovery_frames(run: Run, points: int = 8) -> list[Frame]:
    """For a recovered run: what it was recovered from and how (its spec's settings and what its
    recovery recorded in ``details["recovery"]``), and its loss curve in a few rows. Nothing for a
    run that was not recovered."""
    if run.recovery is None:
        return []
    info = _details(run)
    trainable, total = info.get("trainable_params"), info.get("total_params")
    start = info.get("from") or (run.details or {}).get("recovered_from")
    pairs = [("recovery", run.recovery), ("recovered from", start),
             *_settings((run.spec or {}).get("recovery") or {}),
             ("tokens", f"{info['tokens']:,}" if isinstance(info.get("tokens"), int) else info.get("tokens")),
             ("seconds", info.get("seconds")), ("tokens per second", info.get("tokens_per_second")),
             ("trainable parameters", f"{trainable:,} of {total:,} ({trainable / total:.2%})"
              if isinstance(trainable, int) and isinstance(total, int) and total else trainable),
             ("best step", info.get("best_step")),
             ("held-out ppl before", info.get("heldout_perplexity_before"))]
    pairs += [(f"recovery.{name}", value) for name, value in info.items() if name not in _WORDED]
    frames = [Frame("recovery", "recovery", [Column("field"), Column("value", align="left")],
                    [{"field": f, "value": v} for f, v in pairs if v is not None])]
    if run.recovery_steps:
        every = len(run.recovery_steps) <= points
        frames.append(Frame("recovery_curve", f"loss curve ({len(run.recovery_steps)} steps)", _curve_columns(),
                            thinned(run.recovery_steps, points),
                            caption="" if every else "loss: the mean over the steps since the row before; every "
                                    f"step: twossp dash show recovery_curve --param key={run.key}"))
    return frames
