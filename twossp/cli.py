"""The command line. The only module that prints for humans and chooses exit codes.

Exit codes: 0 success; 1 a run failed or a library error; 2 invalid input (sweep file, usage);
3 database schema out of date.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from twossp.errors import SchemaOutdated, SpecError, TwosspError

console = Console()
err = Console(stderr=True)

DB_OPTION = click.option("--db", "db_url", envvar="TWOSSP_DB", default=None,
                         help="SQLAlchemy URL or SQLite path (default: sqlite:///twossp.db; env TWOSSP_DB).")


def _fail(exc: TwosspError) -> None:
    if isinstance(exc, SpecError):
        for problem in exc.problems:
            err.print(f"[red]error[/] {problem}", highlight=False, soft_wrap=True)
        err.print(f"{len(exc.problems)} problem(s) found")
        sys.exit(2)
    err.print(f"[red]error[/] {exc}", highlight=False, soft_wrap=True)
    sys.exit(3 if isinstance(exc, SchemaOutdated) else 1)


def _database(db_url: str | None, create: bool = True):
    from twossp.db.session import Database

    return Database(db_url, auto_upgrade=create)


@click.group(help="twossp: structured pruning of LLMs with 2SSP, run as declarative sweeps.")
@click.version_option(package_name="twossp")
def main() -> None:
    pass


# ---------------------------------------------------------------------------------- sweep
@main.group(help="Validate, plan and run sweep files.")
def sweep() -> None:
    pass


@sweep.command("validate", help="Check sweep files; report every problem with file and line.")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def validate(files: tuple[str, ...]) -> None:
    from twossp.plan import plan_sweep
    from twossp.spec import load_sweep

    problems = []
    for file in files:
        try:
            spec = load_sweep(file)
        except SpecError as exc:
            problems += exc.problems
            continue
        console.print(f"[green]ok[/] {file}: sweep {spec.name!r}, {len(plan_sweep(spec))} runs", highlight=False)
    if problems:
        _fail(SpecError(problems))


@sweep.command("plan", help="List the runs a sweep expands to, their keys, and which are already done.")
@click.argument("file", type=click.Path(dir_okay=False))
@DB_OPTION
@click.option("--address", default=None,
              help="Check the runs' resources against this Ray cluster (auto or HOST:PORT); without it, "
                   "against this machine's CPUs and memory (GPUs are checked when the sweep runs).")
def plan(file: str, db_url: str | None, address: str | None) -> None:
    from twossp.plan import plan_sweep
    from twossp.runtime.loading import local_config
    from twossp.spec import load_sweep

    try:
        spec = load_sweep(file)
        runs = plan_sweep(spec)
        statuses = _existing_statuses(db_url, [r.key for r in runs])
    except TwosspError as exc:
        _fail(exc)
    configs = {m.label: local_config(m) for m in spec.models}
    table = Table(title=f"sweep {spec.name}: {len(runs)} runs")
    for col in ("key", "model", "method", "sparsity", "calib", "seed", "will remove", "in database"):
        table.add_column(col)
    for run in runs:
        status = statuses.get(run.key, "new")
        colour = {"completed": "green", "failed": "red", "new": "cyan"}.get(status, "yellow")
        table.add_row(run.key, run.model.label, run.method.name,
                      f"{run.sparsity:g}" if run.sparsity is not None else "-",
                      str(run.calibration.samples) if run.calibration else "-",
                      str(run.calibration.seed) if run.calibration else "-",
                      _will_remove(run, configs[run.model.label]), f"[{colour}]{status}[/]")
    console.print(table)
    done = sum(1 for s in statuses.values() if s == "completed")
    console.print(f"{done} of {len(runs)} runs already completed")
    if any(c is None for c in configs.values()):
        console.print("[dim]will remove: shown once a model's config.json is local (path:, the hub cache, "
                      "or a builtin/GGUF model after its first run)[/]")
    _report_unplaceable(runs, address)


def _report_unplaceable(runs, address: str | None) -> None:  # noqa: ANN001
    """Runs whose resources no node can ever give (with the Ray executor), grouped by model."""
    from twossp.runtime.executors import RayExecutor, this_machine, unplaceable

    if address:
        executor = RayExecutor(address=address)
        try:
            reasons, where = executor.unplaceable(runs), f"the Ray cluster at {address}"
        except Exception as exc:  # noqa: BLE001 - Ray's connection errors have no common type
            err.print(f"[red]error:[/] could not check resources against the Ray cluster at {address}: {exc}",
                      highlight=False)
            sys.exit(2)
        finally:
            executor.close()
    else:  # GPUs are checked by `sweep run` (or with --address): counting them here would import torch
        reasons, where = unplaceable(runs, [this_machine()], ignore=("GPU",)), "this machine (the local Ray cluster)"
    by_model: dict[str, tuple[int, str]] = {}
    for run in runs:
        if run.key in reasons:
            count, _ = by_model.get(run.model.label, (0, ""))
            by_model[run.model.label] = (count + 1, reasons[run.key])
    for label, (count, reason) in by_model.items():
        console.print(f"[red]{count} run(s) of {label} can never be placed on {where}:[/] {reason}",
                      highlight=False)


def _will_remove(run, config) -> str:
    """Attention submodules and FFN width a 2SSP run will give, from the config alone."""
    from twossp.plan import expected_blocks, expected_budget

    if config is None:
        return "?" if run.method.name != "dense" else "-"
    try:
        budget, blocks = expected_budget(run, config), expected_blocks(run, config)
    except TwosspError as exc:
        return f"[red]{exc}[/]"
    if blocks is not None:
        return f"{blocks} of {config['num_hidden_layers']} blocks"
    if budget is None:
        return "-"
    return f"{budget.num_attention_removed} attn, FFN {config['intermediate_size']}->{budget.ffn_keep}"


def _missing_sqlite_file(url: str) -> bool:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and bool(parsed.database) and not Path(parsed.database).exists()


def _existing_statuses(db_url: str | None, keys: list[str]) -> dict[str, str]:
    """Read-only: a database that does not exist yet is not created by `plan`."""
    from twossp.db import store
    from twossp.db.session import database_url

    url = database_url(db_url)
    if _missing_sqlite_file(url):
        return {}
    db = _database(url, create=False)
    try:
        with db.session() as session:
            return store.run_statuses(session, keys)
    finally:
        db.close()


@sweep.command("run", help="Run a sweep: plan it, skip completed runs, execute the rest, store results.")
@click.argument("file", type=click.Path(dir_okay=False))
@DB_OPTION
@click.option("--executor", type=click.Choice(["ray", "local"]), default="ray", show_default=True,
              help="ray: local Ray cluster (or --address); local: in-process, one run at a time.")
@click.option("--address", default=None, help="Attach to an existing Ray cluster (auto or HOST:PORT).")
@click.option("--rerun-failed", is_flag=True, help="Also re-run runs that failed before.")
@click.option("--max-retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="Re-submissions of a run whose Ray worker or node died (a run that raises is never retried).")
@click.option("--stale-after", type=click.FloatRange(min=0.5), default=120.0, show_default=True,
              help="Seconds without a heartbeat after which another driver's running run counts as abandoned.")
def run(file: str, db_url: str | None, executor: str, address: str | None, rerun_failed: bool, max_retries: int,
        stale_after: float) -> None:
    from twossp.dash.live import LiveSweep
    from twossp.runtime.driver import SweepCancelled, run_sweep
    from twossp.spec import load_sweep

    try:
        spec = load_sweep(file)
        db = _database(db_url)
    except TwosspError as exc:
        _fail(exc)
    if executor == "ray":
        from twossp.runtime.executors import RayExecutor

        runner = RayExecutor(address=address, max_retries=max_retries)
    else:
        from twossp.runtime.executors import LocalExecutor

        runner = LocalExecutor()
    # SIGTERM (a scheduler stopping us) is handled like Ctrl-C: unfinished runs are released.
    previous_handler = signal.signal(signal.SIGTERM, _interrupt)
    try:
        outcome = run_sweep(spec, db, runner, path=str(Path(file).resolve()), rerun_failed=rerun_failed,
                            display=LiveSweep(console), stale_after=stale_after)
    except SweepCancelled:
        err.print("[yellow]cancelled[/] (twossp sweep cancel): unfinished runs were released and will run next time")
        sys.exit(130)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: unfinished runs were released and will run next time")
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        runner.close()
        db.close()
    console.print()
    elsewhere = f", {len(outcome.elsewhere)} held by another driver" if outcome.elsewhere else ""
    console.print(f"[bold]{len(outcome.completed)} completed, {len(outcome.failed)} failed, "
                  f"{len(outcome.skipped)} skipped{elsewhere}[/] (results in {db.url})", highlight=False)
    for retried_run, reason in outcome.retried:
        err.print(f"[yellow]retried[/] {retried_run.label} ({retried_run.key}): {reason}", highlight=False)
    for failed_run, error in outcome.failed:
        err.print(f"[red]failed[/] {failed_run.label} ({failed_run.key}): {error.strip().splitlines()[-1]}",
                  highlight=False)
    if outcome.failed:
        sys.exit(1)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@sweep.command("cancel", help="Ask the drivers running a sweep to stop; their unfinished runs go back to pending.")
@click.argument("sweep_ref")
@DB_OPTION
def cancel(sweep_ref: str, db_url: str | None) -> None:
    """SWEEP_REF is a sweep file or a sweep name."""
    from twossp.db import store

    name = sweep_ref
    if Path(sweep_ref).is_file():
        from twossp.spec import load_sweep

        try:
            name = load_sweep(sweep_ref).name
        except TwosspError as exc:
            _fail(exc)
    try:
        db = _database(db_url)
    except TwosspError as exc:
        _fail(exc)
    try:
        with db.session() as session:
            running = store.request_cancel(session, name)
    finally:
        db.close()
    if running is None:
        err.print(f"no sweep named {name!r} in {db.url}", highlight=False)
        sys.exit(1)
    console.print(f"cancel requested for sweep {name!r}: {running} run(s) running; their drivers stop within "
                  "their heartbeat interval (at most a quarter of --stale-after, 30 s by default)", highlight=False)


# ---------------------------------------------------------------------------------- results
@main.command(help="Methods side by side per model and sparsity, against dense.")
@DB_OPTION
@click.option("--sweep", "sweep_name", default=None, help="Only runs of this sweep.")
@click.option("--dashboard", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A dashboards/*.yaml view (default: dashboards/leaderboard.yaml).")
def leaderboard(db_url: str | None, sweep_name: str | None, dashboard: str | None) -> None:
    from twossp.dash.leaderboard import leaderboard_table, load_dashboard
    from twossp.db import store

    try:
        db = _database(db_url)
        view = load_dashboard(dashboard)
    except TwosspError as exc:
        _fail(exc)
    with db.session() as session:
        runs = store.leaderboard_cells(session, sweep_name, view.metric)
        if not runs:
            console.print(f"no completed runs in {db.url}" + (f" for sweep {sweep_name!r}" if sweep_name else ""))
            return
        console.print(leaderboard_table(runs, view))


@main.command("runs", help="List runs with their status (and error, for failed ones).")
@DB_OPTION
@click.option("--status", type=click.Choice(["pending", "running", "completed", "failed"]), default=None,
              help="Only runs with this status.")
def runs_cmd(db_url: str | None, status: str | None) -> None:
    from sqlalchemy import select

    from twossp.db.models import Run

    try:
        db = _database(db_url)
    except TwosspError as exc:
        _fail(exc)
    with db.session() as session:
        query = select(Run).order_by(Run.id)
        if status:
            query = query.where(Run.status == status)
        table = Table()
        for col in ("key", "model", "method", "target", "achieved", "status", "tries", "error"):
            table.add_column(col, overflow="fold")
        for r in session.scalars(query):
            error = (r.error or "").strip().splitlines()[-1] if r.error else ""
            table.add_row(r.key, r.model, r.method, f"{r.target_sparsity:g}",
                          f"{r.achieved_sparsity:.4f}" if r.achieved_sparsity is not None else "-", r.status,
                          str(r.attempts), error)
    console.print(table)


@main.command("export", help="Save a completed run's pruned model to DIR, rebuilt from the dense weights "
              "and the masks stored in the database; twossp.load_pruned(DIR) reloads it.")
@click.argument("run_key")
@click.argument("directory", type=click.Path(file_okay=False))
@DB_OPTION
def export(run_key: str, directory: str, db_url: str | None) -> None:
    from twossp.checkpoint import export_run

    try:
        db = _database(db_url)
        saved = export_run(db, run_key, directory)
    except TwosspError as exc:
        _fail(exc)
    console.print(f"saved to {saved.directory}: {saved.note}", highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------- list
@main.group("list", help="What twossp supports.")
def list_group() -> None:
    pass


@list_group.command("methods", help="Sweep methods, one per line, with the paper each follows.")
def list_methods() -> None:
    from twossp.spec import METHODS

    for name, cls in METHODS.items():
        doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())  # the first paragraph, one line
        click.echo(f"{name}\t{doc}")


@list_group.command("families", help="Supported model architectures (config.architectures), one per line.")
def list_families() -> None:
    from twossp.families import family_descriptions

    for arch, description in family_descriptions().items():
        click.echo(f"{arch}\t{description}")


# ---------------------------------------------------------------------------------- db
@main.group(help="Database schema management (Alembic).")
def db() -> None:
    pass


@db.command("upgrade", help="Upgrade the database schema to this version of twossp.")
@DB_OPTION
def db_upgrade(db_url: str | None) -> None:
    from twossp.db.session import database_url, upgrade

    url = database_url(db_url)
    try:
        upgrade(url)
    except TwosspError as exc:
        _fail(exc)
    console.print(f"{url}: schema at head")


@db.command("current", help="Print the schema revision of the database.")
@DB_OPTION
def db_current(db_url: str | None) -> None:
    from twossp.db.session import current_revision, database_url, head_revision, make_engine

    url = database_url(db_url)
    if _missing_sqlite_file(url):
        console.print(f"{url}: no database yet (head {head_revision(url)})")
        return
    engine = make_engine(url)
    console.print(f"{url}: revision {current_revision(engine)} (head {head_revision(url)})")
    engine.dispose()


if __name__ == "__main__":
    main()
