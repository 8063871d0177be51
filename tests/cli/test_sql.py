"""``twossp db sql`` on SQLite and PostgreSQL: rows in every format, writes refused by the database
with the data unchanged; and every SQL example and the example view file of the README run as they
are."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import text

from tests.support.consoles import fixed_terminal, invoke
from tests.support.stored_runs import claim, record, tiny_sweep
from twossp import cli
from twossp.contracts import LayerMask, RecoveryStep, RunResult, RunStatus
from twossp.db.database import Database
from twossp.db.store import add_export
from twossp.plan import plan_sweep

README = Path(__file__).resolve().parents[2] / "README.md"
TABLES = ("sweeps", "runs", "scores", "timings", "layer_masks", "generations", "exports", "export_scores",
          "shared_steps", "run_memory")
#: the comment that opens the README's query of the plan's memory estimate against the measured peak
MEMORY_QUERY = "-- the plan's memory estimate against the measured peak, per run and device"
RECOVERY_QUERY = "-- each recovered run's perplexity beside the run it was recovered from, and its last loss"
GiB = 2**30


@pytest.fixture(autouse=True, scope="module")
def terminal() -> Iterator[None]:
    with fixed_terminal(200):
        yield


def readme_queries() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def fill(db: Database) -> None:
    """A dense and a 2SSP run with a score of each kind the README's queries read, and their memory:
    the 2SSP run split over two GPUs (cuda:1 not estimated), the dense run on the CPU."""
    spec = tiny_sweep("sql")
    runs = plan_sweep(spec)
    assert claim(db, spec, *runs)
    for run in runs:
        pruned = run.method.name != "dense"
        masks = [LayerMask(layer, attention_kept=not (pruned and layer == 1), ffn_width=8,
                           ffn_mask=bytes([0xF0 if pruned else 0xFF])) for layer in range(2)]
        record(db, run, RunResult(
            key=run.key, status=RunStatus.COMPLETED, achieved_sparsity=0.5 if pruned else 0.0, masks=masks,
            scores=[("eval.txt", "perplexity", 20.0 if pruned else 10.0), ("arc_easy", "acc", 0.4),
                    ("speed", "prefill_seconds", 0.1), ("speed", "decode_tokens_per_second", 50.0)],
            timings={"prune": 3.0} if pruned else {}, generations=[("Hello", " world", 2)],
            placement="split 2x cuda" if pruned else "single", memory=MEMORY[pruned]))
        if pruned:  # a GGUF export of it, measured in llama.cpp
            with db.session() as session:
                add_export(session, run.key, "gguf", "/exports/m.q8_0.gguf", 1000, tensor_type="q8_0",
                           architecture="deci", sha256="0" * 64, engine="llama-cpp-python 0.3.36",
                           scores=[("eval.txt", "perplexity", 20.2), ("speed", "prompt_tokens_per_second", 300.0),
                                   ("speed", "generation_tokens_per_second", 60.0)])


#: what fill()'s runs measured, by whether the run is pruned
MEMORY = {
    True: [("plan", "cuda:0", "estimate_bytes", 40 * GiB), ("load", "cuda:0", "peak_cuda_allocated_bytes", 30 * GiB),
           ("stage 1", "cuda:0", "peak_cuda_allocated_bytes", 36 * GiB),
           ("stage 1", "cuda:1", "peak_cuda_allocated_bytes", 12 * GiB), ("load", "cpu", "peak_rss_bytes", 3 * GiB)],
    False: [("plan", "cpu", "estimate_bytes", 2 * GiB), ("load", "cpu", "peak_rss_bytes", GiB),
            ("speed", "cpu", "peak_rss_lifetime_bytes", GiB // 2)],
}


def contents(db: Database) -> dict[str, list]:
    with db.engine.connect() as conn:
        return {t: [tuple(r) for r in conn.execute(text(f"select * from {t} order by 1"))] for t in TABLES}


def test_the_readme_has_at_least_five_queries() -> None:
    assert len(readme_queries()) >= 5


#: rows each README query finds in what fill() stores, in the README's order: perplexity per run,
#: the attention 2SSP removed, pruning times, accuracy per task, recovered runs before and after (none
#: here: see the test of its own below), speed figures, generations, failures, the plan's memory
#: estimate against the peak, what llama.cpp measured on an export
README_ROWS = [2, 1, 1, 2, 0, 4, 2, 0, 2, 3]


def test_every_readme_query_runs_on_both_databases(db: Database) -> None:
    fill(db)
    found = []
    for query in readme_queries():
        result = invoke("db", "sql", "--db", db.url, "--format", "json", "--", query)
        assert result.exit_code == 0, (query, result.output)
        found.append(len(json.loads(result.output)["frames"]["sql"]))
    assert found == README_ROWS


def test_the_readme_memory_query_compares_the_estimate_with_the_peak(db: Database) -> None:
    """The README's query, as it is, on both databases: per run and device that has an estimate, the
    largest peak of any phase and metric beside it."""
    (query,) = [q for q in readme_queries() if q.startswith(MEMORY_QUERY)]
    fill(db)
    result = invoke("db", "sql", "--db", db.url, "--format", "json", "--", query)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["frames"]["sql"]
    keys = {run.method.name: run.key for run in plan_sweep(tiny_sweep("sql"))}
    assert [(r["key"], r["method"], r["placement"], r["device"], r["peak_bytes"], r["estimate_bytes"],
             float(r["percent_of_estimate"])) for r in rows] == sorted([
        (keys["2ssp"], "2ssp", "split 2x cuda", "cuda:0", 36 * GiB, 40 * GiB, 90.0),
        (keys["dense"], "dense", "single", "cpu", GiB, 2 * GiB, 50.0)])


def test_the_readme_recovery_query_puts_each_recovered_run_beside_its_pruning_run(db: Database) -> None:
    """The README's query, as it is, on both databases: a recovered run's perplexity after, its
    pruning run's before, and the loss of its last step; the pruning run and dense have no row."""
    (query,) = [q for q in readme_queries() if q.startswith(RECOVERY_QUERY)]
    spec = tiny_sweep("sql-recovery", recovery=["none", {"name": "kd", "loss": "kd", "steps": 2}])
    runs = plan_sweep(spec)
    assert claim(db, spec, *runs)
    ppl = {None: 10.0, "2ssp": 40.0, "kd": 25.0}
    for run in runs:
        label = run.recovery.label if run.recovery else (None if run.method.name == "dense" else "2ssp")
        curve = [RecoveryStep(step=i, loss=loss, kd_loss=loss, ce_loss=3.0, lr=1e-4, grad_norm=1.0, tokens=64 * i,
                              seconds=float(i)) for i, loss in ((1, 2.5), (2, 1.5))] if run.recovery else []
        record(db, run, RunResult(key=run.key, status=RunStatus.COMPLETED, recovery=curve,
                                  achieved_sparsity=0.0 if label is None else 0.5,
                                  scores=[("eval.txt", "perplexity", ppl[label])]))
    result = invoke("db", "sql", "--db", db.url, "--format", "json", "--", query)
    assert result.exit_code == 0, result.output
    assert [(r["method"], float(r["target_sparsity"]), r["recovery"], r["before"], r["after"], r["last_loss"])
            for r in json.loads(result.output)["frames"]["sql"]] == [("2ssp", 0.5, "kd", 40.0, 25.0, 1.5)]


def test_rows_in_every_format(db: Database) -> None:
    fill(db)
    query = "select method, count(*) as runs from runs group by method order by method"
    table = " ".join(invoke("db", "sql", query, "--db", db.url).output.split())
    assert "method runs" in table and "2ssp 1" in table and "dense 1" in table and "2 row(s)" in table
    assert invoke("db", "sql", query, "--db", db.url, "--format", "csv").output == "method,runs\n2ssp,1\ndense,1\n"
    body = json.loads(invoke("db", "sql", query, "--db", db.url, "--format", "json").output)
    assert body["frames"]["sql"] == [{"method": "2ssp", "runs": 1}, {"method": "dense", "runs": 1}]
    assert "| 2ssp | 1 |" in invoke("db", "sql", query, "--db", db.url, "--format", "markdown").output
    assert r"2ssp & 1 \\" in invoke("db", "sql", query, "--db", db.url, "--format", "latex").output


def test_a_statement_from_standard_input(db: Database) -> None:
    fill(db)
    result = CliRunner().invoke(cli.main, ["db", "sql", "-", "--db", db.url, "--format", "csv"],
                                input="-- a file of SQL\nselect count(*) as n from runs;\n", catch_exceptions=False)
    assert result.exit_code == 0 and result.output == "n\n2\n", result.output


def test_named_parameters(db: Database) -> None:
    fill(db)
    result = invoke("db", "sql", "select method from runs where achieved_sparsity > :s", "--param", "s=0.25",
                    "--db", db.url, "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.output == "method\n2ssp\n"
    missing = invoke("db", "sql", "select method from runs where method = :m", "--db", db.url)
    assert missing.exit_code == 2 and ":m" in missing.output and "Traceback" not in missing.output


@pytest.mark.parametrize("statement", [
    "delete from runs",
    "update runs set status = 'failed'",
    "insert into sweeps (name, spec) values ('x', '{}')",
    "drop table scores",
    "create table x (a integer)",
    "select 1; delete from runs",
    "commit; delete from runs",
])
def test_writes_are_refused_and_the_data_is_unchanged(db: Database, statement: str) -> None:
    fill(db)
    before = contents(db)
    result = invoke("db", "sql", statement, "--db", db.url)
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert "Traceback" not in flat and ("read-only" in flat or "more than one statement" in flat), flat
    assert contents(db) == before


def test_a_bad_query_is_one_message(db: Database) -> None:
    for statement, says in [("select nope from runs", "nope"), ("selec 1", "selec"), ("select * from nowhere", "nowhere")]:
        result = invoke("db", "sql", statement, "--db", db.url)
        assert result.exit_code == 2 and says in result.output and "Traceback" not in result.output, result.output


def test_db_sql_never_creates_a_database(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    result = invoke("db", "sql", "select 1", "--db", missing)
    assert result.exit_code == 2 and not missing.exists()


def test_the_readme_example_view_runs(tmp_path: Path, db: Database) -> None:
    fill(db)
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
                if b.startswith("# twossp dash show counts")]
    yaml.safe_load(block)
    view = tmp_path / "counts.yaml"
    view.write_text(block, encoding="utf-8")
    result = invoke("dash", "show", view, "--db", db.url, "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "method,runs,achieved"
    assert sorted(result.output.splitlines()[1:]) == ["2ssp,1,0.5", "dense,1,0.0"]
    failed = invoke("dash", "show", view, "--db", db.url, "--param", "status=failed")
    assert failed.exit_code == 0 and "no runs" in failed.output
