"""The status view read from another process while ``twossp sweep run`` works on the same database,
on SQLite and PostgreSQL: it follows the sweep's progress (runs move from not started to
completed) and never blocks the driver or fails on a database being written."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from twossp import cli

TWOSSP = Path(sys.executable).with_name("twossp")


def status(url: str) -> dict[str, int] | None:
    """The counts of the status view's first frame, or None before the driver stored its sweep."""
    result = CliRunner().invoke(cli.main, ["dash", "show", "status", "--db", url, "--format", "json"],
                                catch_exceptions=False)
    if result.exit_code == 2 and ("holds no twossp results" in result.output or "no database at" in result.output):
        return None  # the driver has not created the database yet
    assert result.exit_code == 0, result.output
    states = json.loads(result.output)["frames"]["states"]
    return {row["state"]: row["runs"] for row in states} or None


def test_status_follows_a_running_sweep_from_another_process(tiny_checkpoint, db_url: str, tmp_path: Path) -> None:
    # each run times its model's speed too, so that it lasts long enough for polls to catch it running
    evaluation = {**tiny_checkpoint.sweep()["evaluation"],
                  "speed": {"warmup": 2, "repeats": 30, "prompt_tokens": 16, "new_tokens": 16}}
    sweep_file = tiny_checkpoint.write_sweep(tmp_path / "live.yaml", "live", sparsities=[0.25, 0.375, 0.5, 0.625],
                                             evaluation=evaluation)
    driver = subprocess.Popen([str(TWOSSP), "sweep", "run", str(sweep_file), "--executor", "local", "--db", db_url],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        deadline = time.monotonic() + 300
        while driver.poll() is None and time.monotonic() < deadline:
            counts = status(db_url)
            if counts:
                seen.append(counts)
            time.sleep(0.2)
        output, _ = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, output
    final = status(db_url)
    assert final == {"completed": 5, "total": 5}
    assert all(c["total"] == 5 for c in seen)  # the plan's size, known from the sweep's stored spec
    assert any(0 < c.get("completed", 0) < 5 for c in seen), seen  # seen part-way, not only before or after
    assert any(c.get("running") == 1 for c in seen), seen
