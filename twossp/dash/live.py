"""The live view of a running sweep: one row per run with its state, current step and progress."""

from __future__ import annotations

import time

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from twossp.contracts import RunResult
from twossp.dash.frame import STATE_STYLES
from twossp.errors import last_line
from twossp.plan import RunSpec



class LiveSweep:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.rows: dict[str, dict] = {}
        self.live: Live | None = None
        self.started = time.monotonic()

    def start(self, runs: list[RunSpec], statuses: dict[str, str]) -> None:
        for run in runs:
            prior = statuses.get(run.key)
            state = "skipped" if prior in ("completed", "failed") and prior is not None else "queued"
            self.rows[run.key] = {"run": run, "state": state if state != "skipped" else f"done ({prior})",
                                  "phase": "", "done": int(state == "skipped"), "total": 1, "note": "",
                                  "since": None}
        skipped = sum(1 for r in self.rows.values() if r["state"].startswith("done"))
        self.console.print(Text.assemble((f"{len(runs)} runs planned", "bold"), f", {skipped} already in the "
                                         f"database, {len(runs) - skipped} to run"))
        if self.console.is_terminal:  # logs and pipes get one line per finished run instead
            self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
            self.live.start()

    def progress(self, key: str, phase: str, done: int, total: int) -> None:
        row = self.rows.get(key)
        if row is None:
            return
        if row["state"] == "queued":
            row["state"], row["since"] = "running", time.monotonic()
        row.update(phase=phase, done=done, total=max(total, 1))
        self._refresh()

    def finished(self, run: RunSpec, result: RunResult) -> None:
        row = self.rows[run.key]
        row["state"] = result.status
        row["done"], row["total"] = 1, 1
        if result.status == "completed":
            row["phase"] = ""
            row["note"] = "  ".join(f"{d} ppl {v:.2f}" for d, m, v in result.scores if m == "perplexity")
        else:
            row["note"] = last_line(result.error)[:120]
        elapsed = (result.finished_at - result.started_at).total_seconds() if result.started_at and result.finished_at else 0
        message = Text.assemble((str(result.status), STATE_STYLES.get(result.status, "")), f" {run.label} ",
                                (f"({run.key}, {elapsed:.0f}s)", "dim"), f" {row['note']}")
        self.console.print(message, highlight=False, soft_wrap=True)
        self._refresh()

    def stop(self) -> None:
        if self.live:
            self.live.update(self._render())
            self.live.stop()
            self.live = None

    def _refresh(self) -> None:
        if self.live:
            self.live.update(self._render())

    def _render(self) -> Group:
        table = Table(title="sweep", expand=False, show_lines=False)
        for col in ("run", "key", "state", "step", "progress", "result"):
            table.add_column(col, no_wrap=col != "result", overflow="fold", min_width=len(col))
        for key, row in self.rows.items():
            bar = ProgressBar(total=row["total"], completed=row["done"], width=20)
            step = f"{row['phase']} {row['done']}/{row['total']}" if row["state"] == "running" else ""
            state = Text(row["state"], style=STATE_STYLES.get(row["state"].split()[0], ""))
            table.add_row(Text(row["run"].label), key, state, Text(step), bar, Text(row["note"]))
        return Group(table)
