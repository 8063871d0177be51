"""A sweep with its shared steps and without, one after the other on this machine: wall time, and
the same numbers (issue 12).

    .venv/bin/python benchmarks/sweep_sharing.py sweeps/quickstart.yaml
    .venv/bin/python benchmarks/sweep_sharing.py sweeps/smollm2-2ssp-grid.yaml --order shared-first

Each pass is ``twossp sweep run FILE --db <fresh SQLite file>`` in a process of its own, as a user
runs it (the local Ray cluster, started by each pass, is counted: both pay it), the unshared one with
``--no-share``. It prints both wall times, their ratio, the shared steps computed and the runs that
took one, the load average before and after each pass (a contended machine shows there), and checks
that every run has the same status, achieved sparsity, layer masks and scores in both databases
(exit status 1 if not).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TWOSSP = Path(sys.executable).with_name("twossp")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="A sweep with shared steps and without: wall time, same numbers.")
    p.add_argument("sweep", type=Path)
    p.add_argument("--order", choices=["unshared-first", "shared-first"], default="unshared-first")
    p.add_argument("--executor", choices=["ray", "local"], default="ray")
    return p.parse_args(argv)


def one_pass(sweep: Path, db: Path, share: bool, executor: str) -> dict:
    command = [str(TWOSSP), "sweep", "run", str(sweep), "--db", f"sqlite:///{db}", "--executor", executor]
    if not share:
        command.append("--no-share")
    load_before = os.getloadavg()
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return {"share": share, "wall": wall, "load_before": load_before, "load_after": os.getloadavg(),
            "summary": [line for line in done.stdout.splitlines() if "completed" in line or "shared steps" in line]}


def numbers(db: Path) -> dict[str, tuple]:
    with sqlite3.connect(db) as conn:
        runs = {key: (status, sparsity) for key, status, sparsity in
                conn.execute("select key, status, achieved_sparsity from runs")}
        scores = {}
        for key, dataset, metric, value in conn.execute(
                "select r.key, s.dataset, s.metric, s.value from scores s join runs r on r.id = s.run_id "
                "order by r.key, s.dataset, s.metric"):
            scores.setdefault(key, []).append((dataset, metric, value))
        masks = {}
        for key, layer, attention, kept, mask in conn.execute(
                "select r.key, m.layer, m.attention_kept, m.ffn_kept, m.ffn_mask from layer_masks m "
                "join runs r on r.id = m.run_id order by r.key, m.layer"):
            masks.setdefault(key, []).append((layer, attention, kept, bytes(mask)))
    return {key: (*runs[key], scores.get(key), masks.get(key)) for key in runs}


def sharing(db: Path) -> tuple[list[tuple], int]:
    with sqlite3.connect(db) as conn:
        steps = conn.execute("select kind, label, seconds from shared_steps order by id").fetchall()
        took = conn.execute("select count(*) from runs where shared_step is not null").fetchone()[0]
    return steps, took


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    order = [False, True] if args.order == "unshared-first" else [True, False]
    with tempfile.TemporaryDirectory(prefix="twossp-sharing-") as tmp:
        passes = {}
        for share in order:
            db = Path(tmp) / f"{'shared' if share else 'unshared'}.db"
            print(f"{'shared' if share else 'unshared'} pass ...", file=sys.stderr, flush=True)
            passes[share] = {**one_pass(args.sweep.resolve(), db, share, args.executor), "db": db}
        steps, took = sharing(passes[True]["db"])
        same = numbers(passes[True]["db"]) == numbers(passes[False]["db"])
        runs = len(numbers(passes[True]["db"]))
    print(f"sweep {args.sweep} ({runs} runs, executor {args.executor}), passes in the order {args.order}:")
    for share in order:
        p = passes[share]
        print(f"  {'shared  ' if share else 'unshared'}: {p['wall']:7.1f} s   load average "
              f"{p['load_before'][0]:.2f} before, {p['load_after'][0]:.2f} after   {' | '.join(p['summary'])}")
    print(f"  shared / unshared wall time: {passes[True]['wall'] / passes[False]['wall']:.3f}x")
    for kind, label, seconds in steps:
        print(f"  shared step {kind}: {label} ({seconds:.1f} s)")
    print(f"  {took} runs took a shared step's result; identical statuses, sparsities, masks and scores: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
