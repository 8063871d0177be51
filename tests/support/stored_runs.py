"""Runs put in the database through the real store as a driver would (upsert the sweep, claim,
record), without executing them: a tiny sweep whose paths are never read. Shared by the tests of
the database, the dashboards and the CLI that need stored results of known value."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import yaml

from twossp.contracts import RunResult
from twossp.db import store
from twossp.db.database import Database
from twossp.plan import RunSpec
from twossp.spec import SweepSpec, parse_sweep

OWNER = "test-host:1:driver"
T0 = datetime(2026, 1, 2, tzinfo=timezone.utc)


def tiny_sweep(name: str, **overrides: Any) -> SweepSpec:
    """Dense and 2SSP at 0.5 on a model at /models/tiny (never loaded: nothing runs)."""
    data: dict[str, Any] = {
        "name": name, "models": [{"path": "/models/tiny"}], "methods": ["dense", "2ssp"], "sparsities": [0.5],
        "calibration": {"source": {"path": "/data/calib.jsonl"}, "samples": [2], "seq_len": 16},
        "evaluation": {"perplexity": [{"path": "/data/eval.txt"}], "seq_len": 16},
    }
    data.update(overrides)
    return parse_sweep(yaml.safe_dump(data, sort_keys=False), f"{name}.yaml", check_files=False)


def claim(db: Database, spec: SweepSpec, *runs: RunSpec) -> bool:
    """Claim ``runs`` for ``OWNER`` in one transaction; whether every claim was granted."""
    with db.session() as session:
        sweep = store.upsert_sweep(session, spec, None)
        return all([store.claim(session, sweep.id, run, OWNER, rerun_failed=True, stale_before=T0) for run in runs])


def record(db: Database, run: RunSpec, result: RunResult) -> None:
    with db.session() as session:
        assert store.record(session, run, result, OWNER) is not None
