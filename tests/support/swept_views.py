"""A database filled by a real small sweep, for the view tests (``sweep_for_views``, run once per
session by the fixture ``views_db`` in tests/conftest.py): the tiny checkpoint pruned by 2SSP,
ShortGPT and BlockPruner at 0.5 with two calibration sizes and two seeds, evaluated on perplexity,
one lm-eval task (from task files the tests write), speed and a greedy generation, run by
``twossp sweep run --executor local``.

Snapshots need what a sweep measures of the machine to be fixed: after the sweep, and only in this
copy of its database, times, hosts, versions and the speed figures are set to constants, and the
session's folders in the stored sweep and run specs get fixed names (``<checkpoint>``, ``<views>``),
so that a table is as wide wherever and however often the suite ran (the memory a run measured gets
fixed sizes too, one to four MiB by row). Scores, masks, removal orders, generations and keys are
the sweep's own (the keys hash the real paths: the snapshot tests replace them by placeholders of
their width)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from sqlalchemy import select

from tests.support.stored_runs import OWNER, T0
from tests.support.task_files import write_task_files
from tests.support.tiny_checkpoint import TinyCheckpoint
from twossp import cli
from twossp.db.database import Database
from twossp.db.models import Run, RunMemory, Score, Sweep, Timing

#: speed figures per method, so speed-ups are known: (prefill seconds, decode tokens per second)
SPEED = {"dense": (0.20, 100.0), "2ssp": (0.125, 150.0), "shortgpt": (0.10, 180.0), "blockpruner": (0.16, 120.0)}


@dataclass(frozen=True)
class Swept:
    db_file: Path       # the normalised database the views read
    root: Path          # the sweep's folder
    sweep_file: Path
    tmp: Path           # the session's temporary root: normalise() leaves no path under it in the database

    @property
    def url(self) -> str:
        return f"sqlite:///{self.db_file}"


def fixed_folders(value: Any, folders: dict[str, str]) -> Any:
    """``value`` (a path, or a value read from JSON) with each folder of ``folders`` replaced by its
    fixed name."""
    if isinstance(value, str):
        for folder, name in folders.items():
            value = value.replace(folder, name)
        return value
    if isinstance(value, dict):
        return {k: fixed_folders(v, folders) for k, v in value.items()}
    if isinstance(value, list):
        return [fixed_folders(v, folders) for v in value]
    return value


def normalise(db_file: Path, folders: dict[str, str]) -> None:
    """Fix what depends on the machine, the clock and the session's folders (``folders``: each folder
    and the fixed name it gets; see the module's docstring)."""
    with Database(str(db_file), create=False) as db:
        with db.session() as session:
            for sweep in session.scalars(select(Sweep)):
                sweep.created_at = sweep.updated_at = T0
                sweep.path, sweep.spec = fixed_folders(sweep.path, folders), fixed_folders(sweep.spec, folders)
            for i, run in enumerate(session.scalars(select(Run).order_by(Run.id))):
                run.created_at = run.started_at = T0 + timedelta(minutes=i)
                run.finished_at = run.heartbeat_at = run.started_at + timedelta(seconds=10 + i)
                run.host, run.device, run.owner = "test-host", "cpu", OWNER
                run.spec, run.details = fixed_folders(run.spec, folders), fixed_folders(run.details, folders)
                run.versions = {"twossp": "0.1.0", "torch": "2", "transformers": "5", "python": "3"}
            for timing in session.scalars(select(Timing)):
                timing.seconds = 1.0 + 0.25 * (timing.id % 4)
            for memory in session.scalars(select(RunMemory)):
                memory.bytes = (1 + memory.id % 4) * 2**20
                if memory.metric.startswith("peak_rss"):  # the lifetime peak where a machine cannot reset it
                    memory.metric = "peak_rss_bytes"
            for score in session.scalars(select(Score).where(Score.dataset == "speed")):
                method = session.get(Run, score.run_id).method
                prefill, decode = SPEED[method]
                score.value = {"prefill_seconds": prefill, "decode_tokens_per_second": decode}.get(score.metric, 1.0)


def sweep_for_views(tiny_checkpoint: TinyCheckpoint, root: Path, tmp: Path) -> Swept:
    """The sweep run in ``root`` (about a minute), its database copied and normalised; ``tmp`` is the
    session's temporary root."""
    task_data = write_task_files(root / "task-data")
    sweep_file = tiny_checkpoint.write_sweep(
        root / "views.yaml", "views",
        methods=["dense", "2ssp", "shortgpt", {"name": "blockpruner", "num_calibration": 1}],
        sparsities=[0.5],
        calibration={"source": {"path": str(tiny_checkpoint.calibration)}, "samples": [2, 4], "seq_len": 16},
        seeds=[0, 1],
        evaluation={"perplexity": [{"path": str(tiny_checkpoint.evaluation)}], "seq_len": 16, "max_windows": 4,
                    "tasks": [{"name": "arc_easy", "limit": 6}], "task_data": str(task_data),
                    "speed": {"warmup": 0, "repeats": 1, "prompt_tokens": 4, "new_tokens": 2},
                    "generate": {"prompts": ["The river"], "max_new_tokens": 4}})
    raw = root / "raw.db"
    result = CliRunner().invoke(cli.main, ["sweep", "run", str(sweep_file), "--executor", "local", "--db", str(raw)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    db_file = root / "views.db"
    shutil.copy(raw, db_file)
    normalise(db_file, {str(tiny_checkpoint.calibration.parent): "<checkpoint>", str(root): "<views>"})
    return Swept(db_file, root, sweep_file, tmp)
