"""What twossp itself costs per run: scheduling, claims, heartbeats, database writes and the result
transfer, on a sweep of 100 trivial runs (a tiny 4-layer model, one 16-token calibration window,
one 16-token evaluation window: each run computes for milliseconds).

    .venv/bin/python benchmarks/sweep_overhead.py                  # Ray (local cluster) and in-process
    .venv/bin/python benchmarks/sweep_overhead.py --executor ray --db postgresql+psycopg://...

Per executor it prints: the wall time of the sweep (Ray's start counted separately), the time spent
inside the workers' ``execute_run`` (from each run's start and finish stamps), and the overhead per
run = (wall x slots - time in workers) / runs, where slots is how many runs execute at once (1
in-process; the Ray cluster's capacity for this model). Goal: <= 1 s per run on this machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tiny on-disk checkpoint of the test suite (tests/support)

from tests.support.tiny_checkpoint import build  # noqa: E402

from twossp.db.database import Database  # noqa: E402
from twossp.runtime.driver import run_sweep  # noqa: E402
from twossp.runtime.executors import LocalExecutor, RayExecutor  # noqa: E402
from twossp.spec import parse_sweep  # noqa: E402


def sweep_spec(tiny, name: str, runs: int, first_seed: int):
    seeds = list(range(first_seed, first_seed + runs // 2))  # new run keys: nothing is skipped as done
    data = tiny.sweep(name, methods=["shortgpt"], sparsities=[0.25, 0.5], seeds=seeds,
                      calibration={"source": {"path": str(tiny.calibration)}, "samples": [1], "seq_len": 16},
                      evaluation={"perplexity": [{"path": str(tiny.evaluation)}], "seq_len": 16, "max_windows": 1})
    data["models"][0]["cpus"] = 1
    return parse_sweep(yaml.safe_dump(data), f"{name}.yaml")


def measure(executor_name: str, url: str, tiny, runs: int) -> dict[str, float]:
    spec = sweep_spec(tiny, f"overhead-{executor_name}-{time.time_ns()}", runs, first_seed=time.time_ns() % 10**9)
    db = Database(url)
    executor = RayExecutor() if executor_name == "ray" else LocalExecutor()
    start_s = 0.0
    slots = 1
    if executor_name == "ray":
        t = time.perf_counter()
        executor._connect()  # Ray's own start, reported apart from the sweep
        start_s = time.perf_counter() - t
        from twossp.plan import plan_sweep

        slots = executor.capacity(plan_sweep(spec)[0])
    t = time.perf_counter()
    outcome = run_sweep(spec, db, executor)
    wall = time.perf_counter() - t
    executor.close()
    from sqlalchemy import select

    from twossp.db.models import Run, Sweep
    with db.session() as session:
        stamps = session.execute(select(Run.started_at, Run.finished_at).join(Sweep)
                                 .where(Sweep.name == spec.name, Run.status == "completed")).all()
    db.close()
    inside = sum((f - s).total_seconds() for s, f in stamps)
    n = len(outcome.completed)
    assert n == runs and not outcome.failed, (n, outcome.failed[:1])
    return {"runs": n, "ray_start_s": start_s, "wall_s": wall, "slots": slots, "worker_s": inside,
            "wall_per_run": wall / n, "worker_per_run": inside / n, "overhead_per_run": (wall * slots - inside) / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--executor", choices=["ray", "local", "both"], default="both")
    parser.add_argument("--db", default=None, help="database URL (default: a SQLite file in a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tiny = build(Path(tmp) / "tiny")
        url = args.db or f"sqlite:///{tmp}/overhead.db"
        results = {}
        for name in (["local", "ray"] if args.executor == "both" else [args.executor]):
            results[name] = measure(name, url, tiny, args.runs)
    print(f"{'executor':<9} {'runs':>5} {'ray start s':>12} {'wall s':>7} {'slots':>6} {'in workers s':>13} "
          f"{'wall/run s':>11} {'worker/run s':>13} {'overhead/run s':>15}")
    for name, r in results.items():
        print(f"{name:<9} {r['runs']:>5} {r['ray_start_s']:>12.1f} {r['wall_s']:>7.1f} {r['slots']:>6} "
              f"{r['worker_s']:>13.1f} {r['wall_per_run']:>11.3f} {r['worker_per_run']:>13.3f} "
              f"{r['overhead_per_run']:>15.3f}")
    goal = all(r["overhead_per_run"] <= 1.0 for r in results.values())
    print(f"goal (overhead <= 1 s per run): {'met' if goal else 'NOT met'}")


if __name__ == "__main__":
    main()
