"""A user's YAML file (a sweep, a view) read with its line numbers: every problem at once, each at
its file and line, and nothing but ``SpecError`` whatever the text.

Hostile YAML (alias bombs, deep nesting, values PyYAML cannot construct) is measured and refused
before any Python object is built; duplicate keys, which PyYAML silently merges, are reported;
Pydantic's errors are mapped back to the line of the key or value they are about, with a readable
path (``methods[1].alpha``) and "did you mean" for a misspelt key. Knows no schema: the caller
names the model to validate and the union tags its error locations may hold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Collection, Iterable, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from twossp.errors import SpecError, SpecProblem
from twossp.methods import MAX_INT
from twossp.spec.fields import model_at
from twossp.spec.messages import did_you_mean, show

ModelT = TypeVar("ModelT", bound=BaseModel)

#: Hostile-YAML limits: a sweep file is a few dozen values, a few levels deep.
MAX_DEPTH = 100
MAX_NODES = 10_000


# --------------------------------------------------------------------------------------------
# Reading and validating
# --------------------------------------------------------------------------------------------


def read_text(path: Path, kind: str) -> str:
    """A ``kind`` file's text ("sweep", "view"), or ``SpecError`` saying why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError([SpecProblem(str(path), None, "", f"cannot read {kind} file: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise SpecError([SpecProblem(str(path), None, "", f"{kind} file is not UTF-8 text")]) from None


def read_yaml(text: str, file: str, what: str) -> tuple[list[SpecProblem], Any, yaml.Node | None]:
    """A YAML mapping checked before anything is built from it: size and depth (alias bombs, deep
    nesting), syntax, values PyYAML cannot construct, duplicate keys. ``what`` names the kind of
    file in messages ("a sweep file is a YAML mapping (name:, models:, ...)"). Returns the
    problems, the data and its node (for ``validated``)."""
    loader = None
    try:
        _measure(text)
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            return [SpecProblem(file, 1, "", f"the file is empty; {what}")], None, None
        try:
            data = loader.construct_document(node)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as exc:  # noqa: BLE001 - PyYAML's constructors raise ValueError, AttributeError, ...
            return [_construction_problem(node, exc, file)], None, None
    except _Refused as exc:
        return [SpecProblem(file, exc.line, "", exc.message)], None, None
    except yaml.YAMLError as exc:
        return [_yaml_problem(exc, text, file)], None, None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        return [SpecProblem(file, node.start_mark.line + 1, "", f"{what}, not {_kind(data)}")], None, None
    return [SpecProblem(file, line, "", msg) for line, msg in _duplicate_keys(node)], data, node


def validated(cls: type[ModelT], data: Any, node: yaml.Node, file: str, context: dict[str, Any] | None = None,
              union_tags: Collection[Any] = ()) -> tuple[list[SpecProblem], ModelT | None]:
    """``data`` (from ``read_yaml``) validated as ``cls``: the model, or every Pydantic error at
    its file and line (with "did you mean" for a misspelt key). ``union_tags``: see ``locate``."""
    try:
        return [], cls.model_validate(data, context=context)
    except ValidationError as exc:
        tree = Located(node)
        return [SpecProblem(file, *locate(tree, _error_loc(err), union_tags), _message(err, cls))
                for err in exc.errors()], None


def finished(problems: list[SpecProblem]) -> list[SpecProblem]:
    """Problems as reported: each once, by line, printable."""
    return [_plain(p) for p in _by_line(_dedupe(problems))]


def _kind(data: Any) -> str:
    if data is None:
        return "null"
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list"}
    return kinds.get(type(data), f"a {type(data).__name__}")


def _printable(text: str) -> str:
    """Control characters and lone surrogates as escapes: a message prints as plain text."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _plain(problem: SpecProblem) -> SpecProblem:
    return SpecProblem(problem.file, problem.line, _printable(problem.where), _printable(problem.message))


def _dedupe(problems: list[SpecProblem]) -> list[SpecProblem]:
    seen, out = set(), []
    for p in problems:
        if (p.line, p.where, p.message) not in seen:
            seen.add((p.line, p.where, p.message))
            out.append(p)
    return out


def _by_line(problems: list[SpecProblem]) -> list[SpecProblem]:
    return sorted(problems, key=lambda p: p.line or 0)


def _yaml_problem(exc: yaml.YAMLError, text: str, file: str) -> SpecProblem:
    """A YAML syntax error at its line; an unclosed bracket is reported where it was opened,
    not where the parser gave up (often the next key, or one past the end of the file)."""
    problem = getattr(exc, "problem", None) or str(exc)
    mark = getattr(exc, "problem_mark", None)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark else None
    last_line = max(1, len(text.splitlines()))
    if context_mark and (str(context).startswith("while parsing a flow") or (line or 0) > last_line):
        line = context_mark.line + 1
    elif line is not None and line > last_line:
        line = last_line
    if context and context_mark:
        problem = f"{problem} ({context} started at line {context_mark.line + 1})"
    return SpecProblem(file, line, "", f"invalid YAML: {' '.join(str(problem).split()) or 'cannot parse'}")


# --------------------------------------------------------------------------------------------
# Hostile YAML: measured from the event stream, before anything is composed or constructed
# --------------------------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line, self.message = line, message


def _measure(text: str) -> None:
    """Refuse YAML that expands to more than ``MAX_NODES`` values or nests deeper than ``MAX_DEPTH``,
    counting what aliases repeat, and text that is not Unicode (lone surrogates from escapes).

    One iterative pass over the parser's events (the parser, unlike the composer and the
    constructor, does not recurse), memoising each anchor's expanded size and height: a "billion
    laughs" file costs what its text costs, and nothing is composed or constructed before it passes.
    """
    tally = _Tally()
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        tally.add(event, event.start_mark.line + 1 if event.start_mark else None)


class _Tally:
    """What the parser's events so far expand to: values in all, and each open collection's size
    and height (``_measure``)."""

    def __init__(self) -> None:
        self.stack: list[list[Any]] = []      # per open collection: [expanded size, height of children, anchor]
        self.anchors: dict[str, tuple[int, int]] = {}
        self.total = 0                        # expanded values so far

    def add(self, event: yaml.Event, line: int | None) -> None:
        if isinstance(event, yaml.CollectionStartEvent):
            self._open(event, line)
        else:
            value = self._value(event, line)
            if value is not None:
                self._settle(*value, line)
        if self.total > MAX_NODES:
            raise _Refused(line, f"the YAML expands to more than {MAX_NODES:,} values (anchors and aliases "
                                 "repeat what they name); a sweep file is far smaller")

    def _open(self, event: yaml.CollectionStartEvent, line: int | None) -> None:
        self.total += 1
        self.stack.append([1, 0, event.anchor])
        if len(self.stack) > MAX_DEPTH:
            raise _Refused(line, f"the YAML is nested more than {MAX_DEPTH} levels deep")

    def _value(self, event: yaml.Event, line: int | None) -> tuple[int, int, str | None] | None:
        """Expanded size, height and anchor of the value an event completes (an alias, a scalar, the
        end of a collection); None for the events that complete none (documents, streams)."""
        if isinstance(event, yaml.AliasEvent):
            size, height = self._alias(event, line)
            self.total += size
            return size, height, None
        if isinstance(event, yaml.ScalarEvent):
            try:
                event.value.encode("utf-8")
            except UnicodeEncodeError:
                raise _Refused(line, "the YAML holds a lone surrogate (an escape such as \\ud800), "
                                     "which is not text") from None
            self.total += 1
            return 1, 0, event.anchor
        if isinstance(event, yaml.CollectionEndEvent):
            size, height, anchor = self.stack.pop()
            return size, height + 1, anchor
        return None

    def _alias(self, event: yaml.AliasEvent, line: int | None) -> tuple[int, int]:
        """What an alias repeats: its anchor's size and height, remembered when the anchor closed."""
        if event.anchor in self.anchors:
            return self.anchors[event.anchor]
        if any(frame[2] == event.anchor for frame in self.stack):
            raise _Refused(line, f"the alias *{event.anchor} is inside its own anchor (a structure that "
                                 "contains itself)")
        return 1, 0  # an undefined alias: the composer reports it

    def _settle(self, size: int, height: int, anchor: str | None, line: int | None) -> None:
        """A completed value: remembered under its anchor, counted in the collection that holds it."""
        if anchor is not None:
            self.anchors[anchor] = (size, height)
        if self.stack:
            self.stack[-1][0] += size
            self.stack[-1][1] = max(self.stack[-1][1], height)
        if len(self.stack) + height > MAX_DEPTH:
            raise _Refused(line, f"the YAML is nested more than {MAX_DEPTH} levels deep (counting what "
                                 "aliases repeat)")


def _nodes(root: yaml.Node) -> Iterable[yaml.Node]:
    """Every node of a composed graph once, iteratively."""
    seen: set[int] = set()
    todo = [root]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        if isinstance(node, yaml.SequenceNode):
            todo.extend(reversed(node.value))
        elif isinstance(node, yaml.MappingNode):
            todo.extend(n for pair in reversed(node.value) for n in reversed(pair))


def _construction_problem(root: yaml.Node, exc: Exception, file: str) -> SpecProblem:
    """A value PyYAML parsed but cannot build (``!!int "0x"``, ``!!timestamp x``, an integer of more
    than 4,300 digits), at the line of the first such scalar."""
    for node in _nodes(root):
        if isinstance(node, yaml.ScalarNode):
            try:
                yaml.SafeLoader("").construct_object(node)
            except Exception as bad:  # noqa: BLE001 - any failure of a constructor is the user's value
                why = " (a number of more than 4,300 digits)" if "digits" in str(bad) else ""
                return SpecProblem(file, node.start_mark.line + 1, "", f"invalid YAML: cannot read "
                                   f"{show(node.value, 40)} as !!{node.tag.rsplit(':', 1)[-1]}{why}")
    return SpecProblem(file, root.start_mark.line + 1, "", f"invalid YAML: {_short(exc)}")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# --------------------------------------------------------------------------------------------
# Lines of keys and values
# --------------------------------------------------------------------------------------------


def _key(node: yaml.Node) -> Any:
    """A mapping key as Pydantic sees it (``1`` an int, ``null`` None): error locations then find it."""
    if not isinstance(node, yaml.ScalarNode):
        return id(node)
    if node.tag == "tag:yaml.org,2002:str":
        return node.value
    try:
        key = yaml.SafeLoader("").construct_object(node)
        hash(key)
        return key
    except Exception:  # noqa: BLE001 - a merge key `<<`, or a value construction already refused
        return node.value


class Located:
    """A YAML node tree reduced to (line, children) so Pydantic error locations map to lines."""

    def __init__(self, node: yaml.Node) -> None:
        self.line = node.start_mark.line + 1
        self.is_mapping = isinstance(node, yaml.MappingNode)
        self.children: dict[Any, Located] = {}
        self.key_lines: dict[Any, int] = {}
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                self.children[_key(k)] = Located(v)
                self.key_lines[_key(k)] = k.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self.children[i] = Located(v)


def locate(tree: Located, loc: tuple[Any, ...], union_tags: Collection[Any] = ()) -> tuple[int, str]:
    """Line and readable path (``methods[1].alpha``) of a Pydantic error location.

    ``union_tags``: the tags Pydantic inserts into locations for the members of the schema's unions
    (discriminated methods, text sources). A part is dropped from the path only when it is such a
    tag and not a key of the YAML node at that point, so a user's own key (say an unknown ``dense:``
    inside a method) is kept.
    """
    node: Located | None = tree
    line, where = tree.line, ""
    for part in loc:
        parent = node
        child = parent.children.get(part) if parent is not None else None
        if child is None and parent is not None and parent.is_mapping and isinstance(part, str):
            # Pydantic spells a null or boolean key as text ('None')
            part = next((k for k in parent.children if not isinstance(k, str) and str(k) == part), part)
            child = parent.children.get(part)
        if child is None and (part in union_tags or str(part).startswith("function-")):
            continue
        if child is not None:
            line = parent.key_lines.get(part, child.line)
        node = child
        index = isinstance(part, int) and not isinstance(part, bool) and not (parent is not None and parent.is_mapping)
        where += f"[{part}]" if index else (f".{part}" if where else str(part))
    return line, where


def _duplicate_keys(node: yaml.Node, path: str = "") -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for k, v in node.value:
            if _key(k) in seen:
                where = f" in {path}" if path else ""
                found.append((k.start_mark.line + 1, f"duplicate key {show(k.value)}{where}"))
            seen.add(_key(k))
            name = str(k.value) if isinstance(k, yaml.ScalarNode) else "?"
            found += _duplicate_keys(v, f"{path}.{name}" if path else name)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            found += _duplicate_keys(v, f"{path}[{i}]")
    return found


# --------------------------------------------------------------------------------------------
# Pydantic's errors as messages
# --------------------------------------------------------------------------------------------


def _error_loc(err: dict[str, Any]) -> tuple[Any, ...]:
    """Where an error is, without the ``[key]`` Pydantic appends for a bad mapping key."""
    loc = tuple(err["loc"])
    return loc[:-1] if loc and loc[-1] == "[key]" else loc


def _message(err: dict[str, Any], root: type[BaseModel]) -> str:
    loc = _error_loc(err)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "invalid_key" or tuple(err["loc"])[-1:] == ("[key]",):
        return f"the key {show(loc[-1] if loc else err.get('input'))} is not a string (quote it if it is text)"
    if err["type"] == "extra_forbidden":
        model = model_at(loc[:-1], root)
        hint = did_you_mean(loc[-1], model.model_fields) if model is not None else ""
        return f"unknown key {show(loc[-1])}{hint}"
    if err["type"] == "missing":
        return f"missing required key {loc[-1]!r}"
    if err["type"] == "less_than_equal" and (err.get("ctx") or {}).get("le") == MAX_INT:
        return f"{msg}: the results database stores 32-bit integers"
    return msg or err["type"]
