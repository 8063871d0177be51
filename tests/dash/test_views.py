"""Every packaged view rendered from a database a real sweep filled (tests/support/swept_views.py), at a
fixed console width, against stored snapshots (``TWOSSP_UPDATE_SNAPSHOTS=1`` rewrites them after a
deliberate change; review the diff); every output format; JSON against the database; the figures
a chart view writes; view files found, overridden and refused with every problem."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

import pytest
from click.testing import Result

from tests.support.consoles import fixed_terminal, invoke
from twossp.dash.views import view_files

SNAPSHOTS = Path(__file__).parent / "snapshots"
WIDTH = 160
PACKAGED = ["ablation", "compare", "leaderboard", "recovery", "recovery_curve", "run", "status", "tasks",
            "tradeoff"]
#: views of recovered runs: empty here, the sweep recovers none (tests/dash/test_recovery_views.py fills them)
OF_RECOVERY = ("recovery", "recovery_curve")


@pytest.fixture(autouse=True, scope="module")
def terminal() -> Iterator[None]:
    with fixed_terminal(WIDTH):
        yield


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result.output


def sql(views_db, query: str) -> list[tuple]:
    with sqlite3.connect(views_db.db_file) as conn:
        return conn.execute(query).fetchall()


def keys(views_db, method: str) -> list[str]:
    return [k for (k,) in sql(views_db, f"select key from runs where method = '{method}' order by id")]


def view_args(views_db, name: str) -> list[str]:
    """The parameters each packaged view needs, from the sweep's own runs."""
    if name == "run":
        return ["--param", f"key={keys(views_db, '2ssp')[0][:8]}"]
    if name == "compare":
        return ["--param", f"runs={keys(views_db, '2ssp')[0]},{keys(views_db, 'blockpruner')[0]},{keys(views_db, 'shortgpt')[0]}"]
    return []


def stable(views_db, out: str) -> str:
    """Output without the run and evaluation keys, which hash the sweep's file paths (the session's
    folder): each replaced by a placeholder of its width, so that no column's width changes. The
    paths themselves have fixed names in the database the views read (tests/support/swept_views.py);
    the database's own (an empty view names it) gets one here."""
    text = out.replace(str(views_db.db_file), "<views>/views.db")
    for i, (key,) in enumerate(sql(views_db, "select key from runs order by id"), start=1):
        text = text.replace(key, f"run#{i:02d}".ljust(len(key), "."))
    for i, (key,) in enumerate(sql(views_db, "select distinct evaluation_key from runs order by evaluation_key"), start=1):
        text = text.replace(key, f"eval#{i}".ljust(len(key), "."))
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def test_the_sweep_filled_every_table(views_db) -> None:
    states = sql(views_db, "select method, status, count(*) from runs group by method, status order by method")
    assert states == [("2ssp", "completed", 4), ("blockpruner", "completed", 4), ("dense", "completed", 1),
                      ("shortgpt", "completed", 4)]
    for table in ("scores", "timings", "layer_masks", "generations"):
        assert sql(views_db, f"select count(distinct run_id) from {table}") == [(13,)], table


def test_the_views_read_no_path_of_the_session(views_db) -> None:
    """What the views show cannot depend on where the suite ran: no text in the database names the
    session's folder (the snapshots would change width with its length)."""
    with sqlite3.connect(views_db.db_file) as conn:
        dump = "\n".join(conn.iterdump())
    assert str(views_db.tmp) not in dump and "<checkpoint>/calib.jsonl" in dump


def test_every_packaged_view_has_a_snapshot() -> None:
    assert sorted(view_files()) == PACKAGED
    assert sorted(p.stem for p in SNAPSHOTS.glob("*.txt")) == PACKAGED


@pytest.mark.parametrize("name", PACKAGED)
def test_each_view_matches_its_snapshot(views_db, name: str) -> None:
    out = ok(invoke("dash", "show", name, "--db", views_db.db_file, *view_args(views_db, name)))
    text = stable(views_db, out)
    snapshot = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("TWOSSP_UPDATE_SNAPSHOTS"):
        SNAPSHOTS.mkdir(exist_ok=True)
        snapshot.write_text(text, encoding="utf-8")
    expected = snapshot.read_text(encoding="utf-8")
    if not same_but_the_last_digit(text, expected):
        assert text == expected  # pytest shows the difference


#: a number as the views print it (thousands separators are text between numbers)
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def same_but_the_last_digit(text: str, snapshot: str) -> bool:
    """The same text, where a number may differ from the snapshot's by one unit of its last printed
    digit, as wide as it: the snapshots come from a real sweep, and another CPU's rounding moves a
    standard deviation's last digit now and then (74.38 for 74.39). Layout, labels and every other
    figure must be equal."""
    if NUMBER.split(text) != NUMBER.split(snapshot):
        return False
    for got, want in zip(NUMBER.findall(text), NUMBER.findall(snapshot)):
        places = len(want.partition(".")[2])
        if got != want and (len(got) != len(want) or abs(float(got) - float(want)) > 1.01 * 10**-places):
            return False
    return True


def test_a_snapshot_allows_the_last_digit_and_nothing_else() -> None:
    assert same_but_the_last_digit("sd ±74.38  1,204 x", "sd ±74.39  1,204 x")
    assert same_but_the_last_digit("0.50  9.10", "0.49  9.09")
    assert not same_but_the_last_digit("sd ±74.37", "sd ±74.39")   # two units
    assert not same_but_the_last_digit("sd ±10.00", "sd ±9.99")    # wider
    assert not same_but_the_last_digit("2ssp 74.39", "ssp 74.39")  # the text
    assert not same_but_the_last_digit("74.39 1", "74.39")         # a number more


def test_twossp_show_is_the_run_view(views_db) -> None:
    key = keys(views_db, "2ssp")[0]
    shown = ok(invoke("show", key[:6], "--db", views_db.db_file))
    assert shown == ok(invoke("dash", "show", "run", "--param", f"key={key}", "--db", views_db.db_file))
    assert f"layer map of {key} (2ssp 0.5)" in shown


@pytest.mark.parametrize("name", PACKAGED)
@pytest.mark.parametrize("output_format", ["csv", "json", "markdown", "latex"])
def test_every_view_prints_every_format(views_db, name: str, output_format: str) -> None:
    out = ok(invoke("dash", "show", name, "--db", views_db.db_file, "--format", output_format, *view_args(views_db, name)))
    if output_format == "json":
        assert set(json.loads(out)) == {"view", "params", "frames"}
    elif output_format == "csv":
        first = out.split("\n\n")[0].splitlines()
        rows = list(csv.reader(io.StringIO("\n".join(line for line in first if not line.startswith("# frame:")))))
        assert len(rows) >= (1 if name in OF_RECOVERY else 2) and all(len(r) == len(rows[0]) for r in rows)
    elif output_format == "markdown":
        assert re.search(r"^\| .* \|$", out, re.M) and "|---" in out
    else:
        assert out.count(r"\begin{tabular}") == out.count(r"\end{tabular}") >= 1 and r"\toprule" in out


def test_json_of_the_run_view_is_the_database(views_db) -> None:
    key = keys(views_db, "blockpruner")[0]
    frames = json.loads(ok(invoke("show", key, "--db", views_db.db_file, "--format", "json")))["frames"]
    run_id = sql(views_db, f"select id from runs where key = '{key}'")[0][0]
    assert sorted((s["dataset"], s["metric"], s["value"]) for s in frames["scores"]) == sorted(
        sql(views_db, f"select dataset, metric, value from scores where run_id = {run_id}"))
    assert [(t["phase"], t["seconds"]) for t in frames["timings"]] == sql(
        views_db, f"select phase, seconds from timings where run_id = {run_id} order by id")
    assert [(r["layer"], r["attention"] == "kept", r["ffn kept"], r["ffn width"]) for r in frames["layers"]] == [
        (layer, bool(kept), ffn, width) for layer, kept, ffn, width in
        sql(views_db, f"select layer, attention_kept, ffn_kept, ffn_width from layer_masks where run_id = {run_id} "
                   "order by layer")]
    details = json.loads(sql(views_db, f"select details from runs where id = {run_id}")[0][0])
    assert [[s["removed"], s["layer"]] for s in frames["removal"]] == details["removal_order"]
    assert [s["calib ppl after"] for s in frames["removal"]] == details["calibration_perplexity_after_each_removal"]
    assert [(g["prompt"], g["output"]) for g in frames["generations"]] == sql(
        views_db, f"select prompt, output from generations where run_id = {run_id}")


def test_json_of_the_leaderboard_is_the_database(views_db) -> None:
    body = json.loads(ok(invoke("leaderboard", "--db", views_db.db_file, "--format", "json")))
    rows = body["frames"]["leaderboard"]
    assert body["view"] == "leaderboard" and body["params"]["metric"] == "perplexity"
    dataset = sql(views_db, "select distinct dataset from scores where metric = 'perplexity'")[0][0]
    for row in rows:
        values = [v for (v,) in sql(views_db, f"""
            select s.value from runs r join scores s on s.run_id = r.id
            where r.method = '{row['method']}' and s.metric = 'perplexity'
              and coalesce(r.calibration_samples, -1) = {row['n'] if row['n'] is not None else -1}""")]
        assert row[dataset] == pytest.approx(sum(values) / len(values), rel=1e-12)
        assert row["runs"] == len(values)
    dense = next(r for r in rows if r["method"] == "dense")
    for row in rows:
        if row["method"] != "dense":
            assert row[f"{dataset} change"] == pytest.approx(row[dataset] / dense[dataset] - 1)


def test_json_of_a_sql_view_is_its_query(views_db) -> None:
    rows = json.loads(ok(invoke("dash", "show", "tradeoff", "--db", views_db.db_file, "--format", "json")))
    tradeoff = rows["frames"]["tradeoff"]
    assert {(r["method"], r["runs"]) for r in tradeoff} == {("dense", 1), ("2ssp", 4), ("shortgpt", 4),
                                                            ("blockpruner", 4)}
    for r in tradeoff:
        (achieved,) = sql(views_db, f"select avg(achieved_sparsity) from runs where method = '{r['method']}'")[0]
        assert r["achieved"] == pytest.approx(achieved)


# ------------------------------------------------------------------------------------ figures
def test_the_tradeoff_svg_carries_its_series_and_axis_labels(views_db, tmp_path: Path) -> None:
    figure = tmp_path / "tradeoff.svg"
    ok(invoke("dash", "show", "tradeoff", "--db", views_db.db_file, "--output", figure))
    texts = {"".join(node.itertext()).strip() for node in ET.parse(figure).iter("{http://www.w3.org/2000/svg}text")}
    assert {"2ssp", "shortgpt", "blockpruner"} <= texts  # the legend; dense starts every line instead
    assert "dense" not in texts
    assert {"achieved sparsity", "perplexity (log scale)", "mean accuracy"} <= texts
    assert "trade-off: quality against achieved sparsity" in texts
    again = tmp_path / "again.svg"
    ok(invoke("dash", "show", "tradeoff", "--db", views_db.db_file, "--output", again))
    assert again.read_bytes() == figure.read_bytes()  # no date, no random ids: the same rows, the same file


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG\r\n\x1a\n"), (".pdf", b"%PDF")])
def test_chart_views_write_png_and_pdf(views_db, tmp_path: Path, suffix: str, magic: bytes) -> None:
    for name in ("tradeoff", "ablation"):
        figure = tmp_path / f"{name}{suffix}"
        out = ok(invoke("dash", "show", name, "--db", views_db.db_file, "--output", figure))
        assert f"wrote {figure}" in " ".join(out.split())
        assert figure.read_bytes().startswith(magic) and figure.stat().st_size > 5_000


def test_figures_are_refused_where_they_cannot_be_drawn(views_db, tmp_path: Path) -> None:
    no_chart = invoke("leaderboard", "--db", views_db.db_file, "--output", tmp_path / "x.png")
    assert no_chart.exit_code == 2 and "declares no chart" in no_chart.output
    wrong = invoke("dash", "show", "tradeoff", "--db", views_db.db_file, "--output", tmp_path / "x.jpg")
    assert wrong.exit_code == 2 and ".png, .svg, .pdf" in wrong.output
    nothing = invoke("dash", "show", "tradeoff", "--db", views_db.db_file, "--param", "model=nobody",
                     "--output", tmp_path / "x.png")
    assert nothing.exit_code == 2 and "nothing to draw" in nothing.output
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------ parameters
def test_parameters_are_typed_checked_and_named(views_db) -> None:
    unknown = invoke("dash", "show", "leaderboard", "--db", views_db.db_file, "--param", "modle=x")
    assert unknown.exit_code == 2 and "did you mean 'model'" in unknown.output
    missing = invoke("dash", "show", "run", "--db", views_db.db_file)
    assert missing.exit_code == 2 and "needs --param key=" in missing.output
    typed = invoke("dash", "show", "leaderboard", "--db", views_db.db_file, "--param", "lower_is_better=maybe")
    assert typed.exit_code == 2 and "not of type boolean" in typed.output
    malformed = invoke("dash", "show", "leaderboard", "--db", views_db.db_file, "--param", "sweep")
    assert malformed.exit_code == 2 and "NAME=VALUE" in malformed.output
    ambiguous = invoke("show", "", "--db", views_db.db_file)
    assert ambiguous.exit_code == 2 and "a run key" in ambiguous.output
    for out in (unknown, missing, typed, malformed, ambiguous):
        assert "Traceback" not in out.output


def test_a_run_key_prefix_must_name_one_run(views_db) -> None:
    none = invoke("show", "zzzz", "--db", views_db.db_file)
    assert none.exit_code == 2 and "no run with a key starting 'zzzz'" in none.output
    first = {k[0] for k in keys(views_db, "2ssp") + keys(views_db, "shortgpt")}
    prefix = next(c for c in sorted(first) if sum(k.startswith(c) for k in keys(views_db, "2ssp") +
                                                keys(views_db, "shortgpt") + keys(views_db, "blockpruner")) > 1)
    several = invoke("show", prefix, "--db", views_db.db_file)
    assert several.exit_code == 2 and "more than one run" in several.output


def test_a_sql_view_filters_by_its_parameters(views_db) -> None:
    tasks = json.loads(ok(invoke("dash", "show", "tasks", "--db", views_db.db_file, "--format", "json",
                                 "--param", "task=arc_easy", "--param", "sweep=views")))["frames"]["tasks"]
    assert {r["task"] for r in tasks} == {"arc_easy"} and len(tasks) == 4
    other = json.loads(ok(invoke("dash", "show", "tasks", "--db", views_db.db_file, "--format", "json",
                                 "--param", "sweep=another")))["frames"]["tasks"]
    assert other == []


def test_sorting_and_highlighting(views_db) -> None:
    markdown = ok(invoke("dash", "show", "ablation", "--db", views_db.db_file, "--format", "markdown"))
    lines = [line for line in markdown.splitlines() if line.startswith("| tiny")]
    assert len(lines) == 6  # 3 methods x 2 calibration sizes
    groups: dict[str, list[tuple[float, bool]]] = {}
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        mean = float(cells[6].strip("*").split(" ±")[0])
        groups.setdefault(cells[1], []).append((mean, cells[6].startswith("**")))
    for method, values in groups.items():  # each method's lowest perplexity is bold (both, when tied)
        best = min(v for v, _ in values)
        assert [bold for _, bold in values] == [v == best for v, _ in values], method
    assert sum(bold for _, bold in groups["2ssp"]) == 1


# ------------------------------------------------------------------------------------ view files
def test_dash_list_shows_packaged_and_user_views(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text("title: mine\ndescription: my own view\nsql: select 1 as one\n")
    (tmp_path / "leaderboard.yaml").write_text("title: my board\nquery: leaderboard\n")
    out = " ".join(ok(invoke("dash", "list", env={"TWOSSP_DASHBOARDS": str(tmp_path)})).split())
    assert "mine user - my own view" in out
    assert "leaderboard user" in out and "leaderboard packaged" not in out  # the user's replaces the packaged one
    for name in PACKAGED:
        assert f"{name} " in out


def test_a_user_view_runs_its_own_sql(views_db, tmp_path: Path) -> None:
    (tmp_path / "counts.yaml").write_text(
        "title: runs per method\n"
        "params:\n  status: {default: completed}\n"
        "sql: select method, count(*) as runs from runs where status = :status group by method order by method\n"
        "columns:\n  - {name: method}\n  - {name: runs, best: higher}\n")
    env = {"TWOSSP_DASHBOARDS": str(tmp_path)}
    out = ok(invoke("dash", "show", "counts", "--db", views_db.db_file, "--format", "csv", env=env))
    assert out.splitlines() == ["method,runs", "2ssp,4", "blockpruner,4", "dense,1", "shortgpt,4"]
    by_path = ok(invoke("dash", "show", tmp_path / "counts.yaml", "--db", views_db.db_file, "--format", "csv"))
    assert by_path == out


def test_a_view_file_with_five_mistakes_reports_all_five(tmp_path: Path) -> None:
    view = tmp_path / "broken.yaml"
    view.write_text(
        "title: broken\n"                                           # 1
        "refresh: often\n"                                          # 2  not a number
        "sql: select method, count(*) as n from runs where model = :modle group by method\n"  # 3  undeclared :modle
        "params:\n"                                                 # 4
        "  model: {help: a model}\n"                                # 5  declared, never used
        "columns:\n"                                                # 6
        "  - {name: method, colour: red}\n"                         # 7  unknown key (did you mean colors)
        "  - {name: n, format: .2q}\n")                             # 8  not a format
    result = invoke("dash", "show", view)
    assert result.exit_code == 2 and "Traceback" not in result.output
    found = {int(line.split(":")[1]): line for line in result.output.splitlines() if line.startswith("error")}
    assert sorted(found) == [2, 3, 5, 7, 8], result.output
    assert "refresh: Input should be a valid number" in found[2]
    assert "uses :modle, which params: does not declare" in found[3]
    assert "parameter 'model' is declared but the SQL never uses :model" in found[5]
    assert "columns[0].colour: unknown key 'colour' (did you mean 'colors'?)" in found[7]
    assert "'.2q' is not a format" in found[8]
    assert "5 problem(s) found" in result.output


def test_five_other_mistakes_in_one_round(tmp_path: Path) -> None:
    view = tmp_path / "five.yaml"
    view.write_text(
        "title: five\n"                                   # 1
        "query: leaderbord\n"                             # 2  unknown built-in query (did you mean)
        "columns:\n"                                      # 3
        "  - {name: method, format: '%d'}\n"              # 4  not a format
        "  - {name: model, colors: {x: notacolour}}\n"    # 5  not a colour
        "chart: {x: target, y: [perplexity], log: [accuracy]}\n"   # 6  log of a column not charted
        "params:\n"                                       # 7
        "  '9lives': {}\n")                               # 8  not a parameter name
    result = invoke("dash", "show", view)
    assert result.exit_code == 2 and "Traceback" not in result.output
    flat = " ".join(result.output.split())
    assert f"{view}:2: query: unknown built-in query 'leaderbord' (did you mean 'leaderboard'?)" in flat
    assert f"{view}:4: columns[0].format: '%d' is not a format" in flat
    assert f"{view}:5: columns[1].colors: 'notacolour' (for 'x') is not a colour" in flat
    assert f"{view}:6: chart.log[0]: 'accuracy' is not one of the chart's y columns" in flat
    assert f"{view}:7: params: parameter '9lives' is not a name" in flat
    assert "5 problem(s) found" in flat


def test_references_to_columns_a_view_does_not_have(tmp_path: Path) -> None:
    view = tmp_path / "refs.yaml"
    view.write_text("title: refs\nsql: select method, target_sparsity as target from runs\n"
                    "columns:\n  - {name: method, spread: sd}\n  - {name: target}\n"
                    "sort: [-achieved]\ngroup_by: [model]\nchart: {x: target, y: [ppl], series: method}\n")
    flat = " ".join(invoke("dash", "show", view).output.split())
    assert f"{view}:4: columns[0].spread: spread names the column 'sd', which the view does not have" in flat
    assert f"{view}:6: sort[0]: no column 'achieved'; columns: method, target" in flat
    assert f"{view}:7: group_by[0]: no column 'model'" in flat
    assert f"{view}:8: chart.y[0]: no column 'ppl'" in flat


def test_view_files_are_checked_like_sweep_files(tmp_path: Path) -> None:
    view = tmp_path / "v.yaml"
    for text, says in [("title: [unclosed\n", "invalid YAML"), ("", "the file is empty"),
                       ("- a list\n", "a view file is a YAML mapping"),
                       ("a: &a [*a]\n", "inside its own anchor"),
                       ("title: x\ntitle: y\nsql: select 1\n", "duplicate key 'title'"),
                       ("title: x\n", "exactly one of sql:"),
                       ("title: x\nsql: select 1\nquery: leaderboard\n", "exactly one of sql:")]:
        view.write_text(text)
        result = invoke("dash", "show", view)
        assert result.exit_code == 2 and says in " ".join(result.output.split()), (text, result.output)
        assert "Traceback" not in result.output


def test_every_packaged_view_file_starts_with_the_command_that_shows_it() -> None:
    for name, (path, _) in view_files().items():
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith(f"# twossp dash show {name}"), path


def test_an_unknown_view_lists_the_known_ones(views_db) -> None:
    result = invoke("dash", "show", "leaderbord", "--db", views_db.db_file)
    assert result.exit_code == 2 and "did you mean 'leaderboard'" in result.output


def test_the_status_view_redraws_live(views_db) -> None:
    from rich.console import Console

    from twossp.dash.views import find_view, parse_params, watch
    from twossp.db.database import Database

    view = find_view("status")
    console = Console(width=160, record=True, force_terminal=True)
    with Database(views_db.url, create=False, read_only=True) as db:
        watch(view.__class__(view.name, view.path, view.origin,
                             view.spec.model_copy(update={"refresh": 0.01})), db, parse_params(view, []), console,
              count=3)
    shown = console.export_text()
    # drawn, redrawn twice, and left on the screen when it stops
    assert shown.count("runs of sweep views") == 4 and "completed" in shown


def test_the_status_view_lists_unfinished_runs_and_the_latest_completed(views_db) -> None:
    body = json.loads(ok(invoke("dash", "show", "status", "--db", views_db.db_file, "--format", "json",
                                "--param", "limit=5")))
    listed = [r["key"] for r in body["frames"]["runs"]]
    assert listed == [k for (k,) in sql(views_db, "select key from runs order by id")][-5:]
    table = " ".join(ok(invoke("dash", "show", "status", "--db", views_db.db_file, "--param", "limit=5")).split())
    assert "8 earlier completed run(s) not listed (--param limit=0 lists every run)" in table
    every = json.loads(ok(invoke("dash", "show", "status", "--db", views_db.db_file, "--format", "json",
                                 "--param", "limit=0")))
    assert len(every["frames"]["runs"]) == 13


def test_the_frames_of_built_in_queries_have_the_columns_they_declare(views_db) -> None:
    from twossp.dash.queries import QUERIES
    from twossp.dash.views import find_view, parse_params, run_view
    from twossp.db.database import Database

    with Database(views_db.url, create=False, read_only=True) as db:
        for name in PACKAGED:
            view = find_view(name)
            if view.spec.query is None:
                continue
            builtin = QUERIES[view.spec.query]
            for frame in run_view(view, db, parse_params(view, view_args(views_db, name)[1::2])):
                names = {c.name for c in frame.columns}
                if not builtin.dynamic:  # what a view file's references are checked against
                    assert names <= set(builtin.columns[frame.name]), (name, frame.name)


def test_the_ablation_of_a_metric_where_higher_is_better(views_db) -> None:
    markdown = ok(invoke("dash", "show", "ablation", "--db", views_db.db_file, "--format", "markdown",
                         "--param", "metric=acc_norm", "--param", "lower_is_better=false"))
    assert "the highest acc_norm" in markdown
    lines = [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines()
             if line.startswith("| tiny")]
    assert lines and all(cells[3] == "arc_easy" for cells in lines)
    for method in {cells[1] for cells in lines}:
        values = [(float(cells[6].strip("*").split(" ±")[0]), cells[6].startswith("**")) for cells in lines
                  if cells[1] == method]
        best = max(v for v, _ in values)
        assert [bold for _, bold in values] == [v == best for v, _ in values], method
