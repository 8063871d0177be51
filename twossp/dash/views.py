"""Declared views: a YAML file per view (the packaged ones in ``dashboards/``, a user's in
``~/.config/twossp/dashboards`` or the folders ``TWOSSP_DASHBOARDS`` names) says what to query (SQL
with named parameters, or a built-in query), its parameters, how columns are shown, how rows are
sorted and grouped, and which chart fits. A view file is checked like a sweep file: every problem
at once, with its file and line."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from pydantic import Field, field_validator
from sqlalchemy import text
from rich.errors import StyleSyntaxError
from rich.style import Style

from twossp.dash.charts import FIGURE_SUFFIXES, Chart, panels
from twossp.dash.frame import Column, Frame, Param, check_format, plain_value, sort_rows
from twossp.dash.queries import QUERIES
from twossp.dash.render import tables
from twossp.errors import SpecError, SpecProblem, UnknownName, ViewError
from twossp.spec.fields import partial
from twossp.spec.yaml_file import finished, read_text, read_yaml, validated
from twossp.strict import Strict

USER_DIR = Path("~/.config/twossp/dashboards")
ENV = "TWOSSP_DASHBOARDS"

#: Pydantic's tag for the ``str`` member of the smart unions ``default`` and ``series`` (``str |
#: list[str]``): dropped from reported paths (``chart.series``, not ``chart.series.str``), as for sweeps.
_UNION_TAGS = frozenset({"str"})


class ParamSpec(Strict):
    type: Literal["text", "integer", "number", "boolean", "keys"] = "text"
    default: str | int | float | bool | list[str] | None = None
    required: bool = False
    help: str = ""


class ColumnSpec(Strict):
    name: str = Field(min_length=1)
    header: str | None = None
    format: str | None = None
    align: Literal["left", "right", "center"] | None = None
    best: Literal["lower", "higher"] | None = None
    good: Literal["negative", "positive"] | None = None
    spread: str | None = None
    bar: str | None = None
    colors: dict[str, str] = {}
    suffix: str = ""
    hidden: bool = False
    missing: str = "-"


class ChartSpec(Strict):
    x: str = Field(min_length=1)
    y: list[str] = Field(min_length=1)
    series: str | list[str] = []   # the columns that name a line
    log: list[str] = []
    title: str = ""
    baseline: str | None = None  # a series value whose points start every series (dense)


class ViewSpec(Strict):
    """A view file (its name is the file's name: ``leaderboard.yaml`` is the view ``leaderboard``)."""

    title: str = ""
    description: str = ""
    sql: str | None = None     # one statement, named parameters as :name
    query: str | None = None   # or a built-in query (queries.QUERIES)
    params: dict[str, ParamSpec] = {}
    columns: list[ColumnSpec] = []
    sort: list[str] = []       # column names, -name for descending
    group_by: list[str] = []
    chart: ChartSpec | None = None
    refresh: float | None = Field(default=None, gt=0, le=3600)  # seconds between redraws with --live
    empty: str = "no rows"     # what is printed when the view has nothing to show

    @field_validator("params")
    @classmethod
    def _param_names(cls, value: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_]\w*", name):
                raise ValueError(f"parameter {name!r} is not a name (letters, digits and _; SQL spells it :{name})")
        return value


@dataclass(frozen=True)
class View:
    """A validated view file: ``spec`` and where it came from."""

    name: str
    path: Path
    origin: str   # packaged | user
    spec: ViewSpec

    @property
    def params(self) -> dict[str, Param]:
        """Every parameter with its type and default: a built-in query's, as the file sets them."""
        base = dict(QUERIES[self.spec.query].params) if self.spec.query else {}
        for name, declared in self.spec.params.items():  # only what the file sets: a built-in's type stays
            base[name] = replace(base.get(name, Param()), **declared.model_dump(exclude_unset=True))
        return base

    @property
    def chart(self) -> Chart | None:
        c = self.spec.chart
        if c is None:
            return None
        series = (c.series,) if isinstance(c.series, str) else tuple(c.series)
        return Chart(c.x, tuple(c.y), series, tuple(c.log), c.title or self.spec.title, c.baseline)


# ------------------------------------------------------------------------------- checks
def _sql_params(sql: str) -> list[str]:
    """The ``:name`` parameters of SQL, as the database layer binds them (``sqlalchemy.text``)."""
    return list(text(sql).compile().params)


@dataclass
class _ViewFile:
    """What the view rules read: a view (a ``ViewSpec``, or what validates of an invalid one, see
    ``fields.partial``: an invalid field None), the keys the file gives, the line of each key path
    (``_key_lines``) and the file's name."""

    spec: Any
    given: set[str]
    lines: dict[str, Any]
    file: str

    def problem(self, where: str, message: str) -> SpecProblem:
        """A problem at ``where`` (``columns[2].format``), on its line or its top-level key's."""
        return SpecProblem(self.file, self.lines.get(where) or self.lines.get(where.split(".")[0]) or 1, where, message)

    @property
    def params(self) -> dict[str, ParamSpec]:
        return self.spec.params or {}

    @property
    def columns(self) -> list[ColumnSpec]:
        """The valid declared columns."""
        return [c for c in self.spec.columns or [] if c is not None]

    @cached_property
    def known(self) -> set[str] | None:
        """The columns the view's rows have, where the file says: a built-in query's (unless its
        columns depend on the data), or the columns an SQL view declares. None when unknown, or when
        a column is invalid (reported already: what refers to it is not guessed at)."""
        known: set[str] | None = None
        if self.spec.query in QUERIES:
            builtin = QUERIES[self.spec.query]
            known = None if builtin.dynamic else {c for cols in builtin.columns.values() for c in cols}
        if self.spec.sql is not None and self.columns:
            known = {c.name for c in self.columns}
        return known if len(self.columns) == len(self.spec.columns or []) else None

    def column_exists(self, where: str, name: str) -> Iterator[SpecProblem]:
        """A reference to a column (in ``sort``, ``group_by``, ``chart``) names one of the view's."""
        if self.known is not None and name not in self.known:
            yield self.problem(where, f"no column {name!r}; columns: {', '.join(sorted(self.known))}")


def _one_query(view: _ViewFile) -> Iterator[SpecProblem]:
    """A view runs exactly one query: its own SQL or a built-in one."""
    if ("sql" in view.given) == ("query" in view.given):
        yield view.problem("sql" if "sql" in view.given else "query", "a view has exactly one of sql: (a SELECT "
                           f"with :parameters) and query: (a built-in query: {', '.join(QUERIES)})")


def _builtin_query_takes_the_params(view: _ViewFile) -> Iterator[SpecProblem]:
    """A built-in query exists, and the parameters the file declares for it are its own, with its types."""
    query = view.spec.query
    if query is None:
        return
    try:
        builtin = QUERIES[query]
    except UnknownName as exc:
        yield view.problem("query", str(exc))
        return
    for name, declared in view.params.items():
        if name not in builtin.params:
            yield view.problem(f"params.{name}", f"the built-in query {query!r} takes no parameter {name!r}; it "
                                                 f"takes: {', '.join(builtin.params)}")
        elif "type" in declared.model_fields_set and declared.type != builtin.params[name].type:
            yield view.problem(f"params.{name}", f"the built-in query {query!r} takes {name!r} as "
                                                 f"{builtin.params[name].type}, not {declared.type}")


def _sql_params_are_declared(view: _ViewFile) -> Iterator[SpecProblem]:
    """The SQL's ``:name`` parameters and ``params:`` are the same names: one undeclared could not be
    bound, one unused would be a ``--param`` that changes nothing."""
    if view.spec.sql is None:
        return
    used = _sql_params(view.spec.sql)
    for name in used:
        if name not in view.params and view.spec.params is not None:
            yield view.problem("sql", f"the SQL uses :{name}, which params: does not declare")
    for name in view.params:
        if name not in used:
            yield view.problem(f"params.{name}", f"parameter {name!r} is declared but the SQL never uses :{name}")


def _column_settings_are_valid(view: _ViewFile) -> Iterator[SpecProblem]:
    """Each column's number format and colours parse, and its ``spread`` and ``bar`` name columns the
    view has: a mistake there would only show when the view is drawn."""
    for i, col in enumerate(view.spec.columns or []):
        if col is None:
            continue
        if col.format is not None and (why := check_format(col.format)):
            yield view.problem(f"columns[{i}].format", why)
        for value, style in col.colors.items():
            try:
                Style.parse(style)
            except StyleSyntaxError:
                yield view.problem(f"columns[{i}].colors",
                                   f"{style!r} (for {value!r}) is not a colour or style (red, bold green, ...)")
        for ref in ("spread", "bar"):
            target = getattr(col, ref)
            if target is not None and view.known is not None and target not in view.known:
                yield view.problem(f"columns[{i}].{ref}", f"{ref} names the column {target!r}, which the view does "
                                                          f"not have; columns: {', '.join(sorted(view.known))}")


def _sort_and_group_columns_exist(view: _ViewFile) -> Iterator[SpecProblem]:
    """``sort`` and ``group_by`` name columns the view has."""
    for i, key in enumerate(view.spec.sort or []):
        if key is not None:  # an invalid item (None in a partial spec) was reported with its type
            yield from view.column_exists(f"sort[{i}]", key.removeprefix("-"))
    for i, key in enumerate(view.spec.group_by or []):
        if key is not None:
            yield from view.column_exists(f"group_by[{i}]", key)


def _chart_columns_exist(view: _ViewFile) -> Iterator[SpecProblem]:
    """The chart's x, y and series name columns the view has, and its log axes are among its y."""
    chart = view.spec.chart
    if chart is None:
        return
    yield from view.column_exists("chart.x", chart.x)
    for i, y in enumerate(chart.y):
        yield from view.column_exists(f"chart.y[{i}]", y)
    one_series = isinstance(chart.series, str)
    for i, name in enumerate([chart.series] if one_series else chart.series):
        yield from view.column_exists("chart.series" if one_series else f"chart.series[{i}]", name)
    for i, y in enumerate(chart.log):
        if y is not None and y not in chart.y:
            yield view.problem(f"chart.log[{i}]", f"{y!r} is not one of the chart's y columns "
                               f"({', '.join(str(column) for column in chart.y)})")


def _param_defaults_fit_their_types(view: _ViewFile) -> Iterator[SpecProblem]:
    """A parameter's default is of its type (the file's, or else the built-in query's)."""
    for name, param in view.params.items():
        builtin_param = QUERIES[view.spec.query].params.get(name) if view.spec.query in QUERIES else None
        kind = param.type if "type" in param.model_fields_set or builtin_param is None else builtin_param.type
        if param.default is not None and (why := _type_problem(kind, param.default)):
            yield view.problem(f"params.{name}", f"default {why}")


def _restyled_columns_exist(view: _ViewFile) -> Iterator[SpecProblem]:
    """The columns a built-in query's view restyles by name are columns of that query."""
    if view.spec.query is None or view.known is None:
        return
    for i, col in enumerate(view.columns):
        if col.name not in view.known:
            yield view.problem(f"columns[{i}].name", f"the built-in query {view.spec.query!r} has no column "
                                                     f"{col.name!r}; columns: {', '.join(sorted(view.known))}")


#: What a well-typed view file can still get wrong, in the order its problems are reported.
_VIEW_RULES = (_one_query, _builtin_query_takes_the_params, _sql_params_are_declared, _column_settings_are_valid,
               _sort_and_group_columns_exist, _chart_columns_exist, _param_defaults_fit_their_types,
               _restyled_columns_exist)


def _problems(spec: Any, given: set[str], tree_lines: dict[str, Any], file: str) -> list[SpecProblem]:
    """What a well-typed view file can still get wrong: the query, its parameters, the columns that
    sort, group, chart, spread and bar refer to, formats and colours. ``spec`` may be a partial
    one (``fields.partial``: an invalid field None), so these run in the same round as type errors."""
    view = _ViewFile(spec, given, tree_lines, file)
    return [problem for rule in _VIEW_RULES for problem in rule(view)]


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in ("true", "false", "yes", "no", "1", "0"):
        raise ValueError(text)
    return lowered in ("true", "yes", "1")


#: parameter type -> (the Python types of its values, how a --param string becomes one)
PARAM_TYPES: dict[str, tuple[tuple[type, ...], Any]] = {
    "text": ((str,), str),
    "integer": ((int,), int),
    "number": ((int, float), float),
    "boolean": ((bool,), _boolean),
    "keys": ((list,), lambda text: [k.strip() for k in text.split(",") if k.strip()]),
}


def _type_problem(kind: str, value: Any) -> str | None:
    expected, _ = PARAM_TYPES[kind]
    fits = isinstance(value, expected) and (kind == "boolean" or not isinstance(value, bool))
    return None if fits else f"{value!r} is not of type {kind}"


def _key_lines(node: Any) -> dict[str, int]:
    """Line of each key path (``chart.x``, ``columns[2].format``) of a YAML node."""
    import yaml

    lines: dict[str, int] = {}

    def walk(n: Any, path: str) -> None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                where = f"{path}.{k.value}" if path else str(k.value)
                lines.setdefault(where, k.start_mark.line + 1)
                walk(v, where)
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                lines.setdefault(f"{path}[{i}]", v.start_mark.line + 1)
                walk(v, f"{path}[{i}]")

    walk(node, "")
    return lines


def parse_view(text: str, file: str) -> ViewSpec:
    """A view file's text validated: ``SpecError`` with every problem and its line."""
    problems, data, node = read_yaml(text, file, "a view file is a YAML mapping (title:, sql: or query:, ...)")
    if data is None:
        raise SpecError(finished(problems))
    errors, spec = validated(ViewSpec, data, node, file, union_tags=_UNION_TAGS)
    problems += errors + _problems(spec if spec is not None else partial(ViewSpec, data), set(data), _key_lines(node),
                                  file)
    if problems or spec is None:
        raise SpecError(finished(problems))
    return spec


def load_view(path: str | Path, origin: str = "file") -> View:
    path = Path(path)
    return View(path.stem, path, origin, parse_view(read_text(path, "view"), str(path)))


# ------------------------------------------------------------------------------- the registry
def view_dirs() -> list[tuple[Path, str]]:
    """Where views are found, in order; a later folder's view replaces an earlier one's of the
    same name: the packaged views, then the user's."""
    dirs = [(Path(str(resources.files("twossp.dashboards"))), "packaged")]
    extra = os.environ.get(ENV)
    users = [Path(p) for p in extra.split(os.pathsep) if p] if extra else [USER_DIR.expanduser()]
    return dirs + [(d, "user") for d in users]


def view_files() -> dict[str, tuple[Path, str]]:
    """Name -> (file, origin) of every view file found (not yet validated)."""
    found: dict[str, tuple[Path, str]] = {}
    for directory, origin in view_dirs():
        if directory.is_dir():
            for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
                found[path.stem] = (path, origin)
    return found


def find_view(name_or_path: str) -> View:
    """A view by name (user views first), or a view file by path."""
    files = view_files()
    if name_or_path in files:
        path, origin = files[name_or_path]
        return load_view(path, origin)
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        return load_view(name_or_path)
    raise UnknownName("view", name_or_path, list(files))


# ------------------------------------------------------------------------------- running
def parse_params(view: View, given: list[str] | dict[str, Any]) -> dict[str, Any]:
    """``--param name=value`` strings (or values already typed) checked against the view's
    parameters: typed, defaults filled in, a missing required one or an unknown one refused."""
    declared = view.params
    pairs: dict[str, Any] = {}
    items = given.items() if isinstance(given, dict) else [_split(p) for p in given]
    for name, value in items:
        if name not in declared:
            raise UnknownName(f"parameter of view {view.name!r}", name, list(declared))
        pairs[name] = _typed(name, declared[name], value)
    out = {}
    for name, param in declared.items():
        if name in pairs:
            out[name] = pairs[name]
        elif param.required:
            raise ViewError(f"view {view.name!r} needs --param {name}=... ({param.help or param.type})")
        else:
            out[name] = param.default
    return out


def named_values(given: Iterable[str]) -> dict[str, str]:
    """``NAME=VALUE`` strings (``--param``) as a mapping, untyped (``twossp db sql``)."""
    return dict(_split(text) for text in given)


def _split(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ViewError(f"--param takes NAME=VALUE, got {text!r}")
    return name.strip(), value


def _typed(name: str, param: Param, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return PARAM_TYPES[param.type][1](value)
    except ValueError:
        raise ViewError(f"--param {name}={value!r} is not of type {param.type}") from None


def run_view(view: View, db: Any, params: dict[str, Any]) -> list[Frame]:
    """The view's frames from ``db`` (a ``Database``, read-only for shows), ``params`` already
    checked by ``parse_params``."""
    spec = view.spec
    if spec.sql is not None:
        used = set(_sql_params(spec.sql))
        frame = sql_frame(db, spec.sql, {k: v for k, v in params.items() if k in used}, view.name, spec.title)
        missing = [c.name for c in spec.columns if frame.column(c.name) is None]
        if missing:
            raise ViewError(f"view {view.name!r}: the query returned no column {', '.join(map(repr, missing))} "
                            f"(it returned {', '.join(c.name for c in frame.columns)})")
        frames = [frame]
    else:
        with db.session() as session:
            frames = QUERIES[spec.query].run(session, params)
    return [_shaped(frame, spec) for frame in frames]


def sql_frame(db: Any, sql: str, params: dict[str, Any], name: str = "sql", title: str = "") -> Frame:
    """One SQL statement's rows as a frame, run read-only by ``db`` (``Database.query``)."""
    result = db.query(sql, params)
    names = _unique(result.columns)
    return Frame(name, title, [Column(c) for c in names],
                 [dict(zip(names, map(plain_value, r))) for r in result.rows])


def _unique(names: list[str]) -> list[str]:
    """Column names as rows can key them: a repeated name (``select a.id, b.id``) numbered."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def figure_checked(view: View, frames: list[Frame], path: str) -> Chart:
    """The view's chart, when ``path`` is a figure file it can be written to."""
    chart = view.chart
    if chart is None:
        raise ViewError(f"view {view.name!r} declares no chart: --output needs a view with chart:")
    if Path(path).suffix.lower() not in FIGURE_SUFFIXES:
        raise ViewError(f"{path}: a figure is written as {', '.join(FIGURE_SUFFIXES)} (by its suffix)")
    folder = Path(path).resolve().parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ViewError(f"{path}: cannot write a figure there ({folder} is not a folder this user can write)")
    if not panels(frames[0], chart):
        raise ViewError(f"view {view.name!r}: no row has numbers for {chart.x} and {', '.join(chart.y)}: nothing to draw")
    return chart


def watch(view: View, db: Any, params: dict[str, Any], console: Any, count: int | None = None) -> None:
    """Redraw the view every ``refresh:`` seconds (2 by default) until Ctrl-C (or ``count`` times):
    each redraw reads the database afresh, so it follows a sweep another terminal is running."""
    import time

    from rich.live import Live

    every = view.spec.refresh or 2.0
    shown = 0
    with Live(tables(run_view(view, db, params)), console=console, auto_refresh=False) as live:
        try:
            while count is None or shown < count:
                shown += 1
                if shown > 1:
                    live.update(tables(run_view(view, db, params)), refresh=True)
                if count is None or shown < count:
                    time.sleep(every)
        except KeyboardInterrupt:
            pass


def _shaped(frame: Frame, spec: ViewSpec) -> Frame:
    """The file's column settings laid over a frame's (for SQL, the declared columns in their
    order), then its sorting and grouping where the frame has those columns."""
    declared = {c.name: c for c in spec.columns}
    columns = []
    for col in frame.columns:
        if col.name in declared:
            d = declared[col.name]
            col = replace(col, **{k: v for k, v in d.model_dump(exclude_unset=True).items() if k != "name"})
        columns.append(col)
    if spec.sql is not None and spec.columns:  # the declared columns in their order; the rest in CSV and JSON only
        order = {c.name: i for i, c in enumerate(spec.columns)}
        columns = sorted((c if c.name in order else replace(c, hidden=True) for c in columns),
                         key=lambda c: order.get(c.name, len(order)))
    names = {c.name for c in columns}
    rows = frame.rows
    sort = [k for k in spec.sort if k.removeprefix("-") in names]
    if sort and len(sort) == len(spec.sort):
        rows = sort_rows(rows, sort)
    group_by = tuple(spec.group_by) if spec.group_by and set(spec.group_by) <= names else frame.group_by
    title = frame.title or spec.title
    return replace(frame, columns=columns, rows=rows, group_by=group_by, title=title)
