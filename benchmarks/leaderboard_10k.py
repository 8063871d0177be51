"""`twossp leaderboard` and the other views on a database holding 10,000 completed runs, on SQLite
and on PostgreSQL.

Fills a fresh database through the ORM's tables (runs with three perplexity scores and four
timings each, across 4 models x 7 methods x 3 sparsities x calibration sizes x seeds), then times,
over several repetitions: the leaderboard's query (``store.leaderboard_cells``), the whole view
(``run_view``: query and frames, through the read-only connection), rendering its table, the
whole command as a user runs it (a fresh process: ``twossp leaderboard --db URL``), and the views
``tradeoff`` (SQL), ``ablation`` and ``status``. Goal: query < 100 ms.

    .venv/bin/python benchmarks/leaderboard_10k.py                 # SQLite and a throwaway Postgres
    .venv/bin/python benchmarks/leaderboard_10k.py --runs 2000 --backend sqlite
"""

from __future__ import annotations

import argparse
import io
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from rich.console import Console
from sqlalchemy import create_engine, insert, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the throwaway Postgres server of the test suite (tests/support)

from twossp.dash.render import tables  # noqa: E402
from twossp.dash.views import find_view, parse_params, run_view  # noqa: E402
from twossp.db import store  # noqa: E402
from twossp.db.models import Run, Score, Sweep, Timing, utcnow  # noqa: E402
from twossp.db.database import Database  # noqa: E402

MODELS = ["Llama-2-7b-hf", "Mistral-7B-v0.3", "Qwen2.5-7B", "Phi-3-medium-128k-instruct"]
METHODS = ["2ssp", "shortgpt", "window", "blockpruner", "evopress", "slicegpt"]
DATASETS = ["wikitext2", "c4", "fineweb-edu"]
EVALUATION = {"perplexity": ["c4", "fineweb-edu", "wikitext2"], "seq_len": 2048, "max_windows": None}
EVALUATION_KEY = "b3" * 8  # every run evaluated alike: one evaluation key


def fill(url: str, runs: int) -> None:
    db = Database(url)
    now = utcnow()
    with db.session() as session:
        sweep = Sweep(name="bench", path=None, spec={"name": "bench"})
        session.add(sweep)
        session.flush()
        sweep_id = session.execute(text("select id from sweeps where name = 'bench'")).scalar_one()
    # as many seeds as it takes to reach ``runs`` (itertools.product would exhaust an endless count)
    grid = ((model, method, sparsity, samples, seed) for seed in itertools.count()
            for model, method, sparsity, samples in itertools.product(
                MODELS, METHODS, [0.25, 0.375, 0.5], [2, 4, 8, 16, 32, 64, 128, 256]))
    rows = []
    for model in MODELS:  # one dense run per model
        rows.append(dict(model=model, method="dense", target=0.0, samples=None, seed=None))
    for model, method, sparsity, samples, seed in grid:
        if len(rows) >= runs:
            break
        rows.append(dict(model=model, method=method, target=sparsity, samples=samples, seed=seed))
    with db.engine.begin() as conn:
        for start in range(0, len(rows), 1000):
            chunk = rows[start:start + 1000]
            ids = []
            for r in chunk:
                spec = {"sweep": "bench", "evaluation": EVALUATION, "filler": "x" * 600}  # a realistic size
                ids.append(conn.execute(insert(Run).values(
                    key=uuid.uuid4().hex[:16], sweep_id=sweep_id, model=r["model"], method=r["method"],
                    target_sparsity=r["target"], achieved_sparsity=r["target"] + 0.001,
                    calibration_samples=r["samples"], seed=r["seed"], status="completed", created_at=now,
                    started_at=now, finished_at=now, params_dense=6_000_000_000, params_pruned=4_000_000_000,
                    spec=spec, details={"budget": {"ffn_keep": 7744}}, attempts=1,
                    evaluation_key=EVALUATION_KEY).returning(Run.id)).scalar_one())
            conn.execute(insert(Score), [dict(run_id=i, dataset=d, metric="perplexity", value=10.0 + k)
                                         for i in ids for k, d in enumerate(DATASETS)])
            conn.execute(insert(Timing), [dict(run_id=i, phase=p, seconds=1.0)
                                          for i in ids for p in ("load", "prune", "stage 1", "stage 2")])
    if db.engine.dialect.name == "postgresql":
        # What autovacuum does to a live database soon after: right after a bulk load the planner has
        # no statistics, guesses a handful of rows and may pick nested loops (ablation took 13 s).
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
    db.close()


def timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def measure(url: str, runs: int, repeat: int) -> dict[str, float]:
    start = time.perf_counter()
    fill(url, runs)
    filled = time.perf_counter() - start
    db = Database(url, create=False, read_only=True)
    with db.session() as session:
        count = session.execute(text("select count(*) from runs")).scalar_one()

    def query():
        with db.session() as session:
            return store.leaderboard_cells(session, None, "perplexity")

    query_s, _ = timed(query, repeat)
    views = {name: find_view(name) for name in ("leaderboard", "tradeoff", "ablation", "status")}
    view_ms = {}
    for name, view in views.items():
        seconds, frames = timed(lambda: run_view(view, db, parse_params(view, [])), repeat)
        view_ms[name] = seconds * 1e3
        if name == "leaderboard":
            board = frames
    console = Console(file=io.StringIO(), width=160)
    render_s, _ = timed(lambda: console.print(tables(board)), repeat)
    db.close()
    cli = str(Path(sys.executable).with_name("twossp"))
    command_s, _ = timed(lambda: subprocess.run([cli, "leaderboard", "--db", url], check=True,
                                                capture_output=True), 3)
    return {"runs": count, "fill_s": filled, "query_ms": query_s * 1e3, "table_ms": view_ms["leaderboard"],
            "render_ms": render_s * 1e3, "command_s": command_s, "rows_shown": len(board[0].rows),
            **{f"{name}_ms": ms for name, ms in view_ms.items() if name != "leaderboard"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    results = {}
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            results["sqlite"] = measure(f"sqlite:///{tmp}/bench.db", args.runs, args.repeat)
    if args.backend in ("postgresql", "both"):
        from tests.support.pg_server import postgres_server, unavailable_reason

        reason = unavailable_reason()
        if reason:
            print(f"postgresql skipped: {reason}")
        else:
            with postgres_server() as admin:
                engine = create_engine(admin, isolation_level="AUTOCOMMIT")
                with engine.connect() as conn:
                    conn.execute(text("CREATE DATABASE bench"))
                engine.dispose()
                results["postgresql"] = measure(admin.rsplit("/", 1)[0] + "/bench", args.runs, args.repeat)
    print(f"{'backend':<11} {'runs':>6} {'fill s':>7} {'query ms':>9} {'view ms':>8} {'render ms':>10} "
          f"{'command s':>10} {'rows':>5} {'tradeoff ms':>12} {'ablation ms':>12} {'status ms':>10}")
    for backend, r in results.items():
        print(f"{backend:<11} {r['runs']:>6} {r['fill_s']:>7.1f} {r['query_ms']:>9.1f} {r['table_ms']:>8.1f} "
              f"{r['render_ms']:>10.1f} {r['command_s']:>10.2f} {r['rows_shown']:>5} {r['tradeoff_ms']:>12.1f} "
              f"{r['ablation_ms']:>12.1f} {r['status_ms']:>10.1f}")
    goal = all(r["query_ms"] < 100 for r in results.values())
    print(f"goal (query < 100 ms): {'met' if goal else 'NOT met'}")


if __name__ == "__main__":
    main()
