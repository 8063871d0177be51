"""Pydantic models read through their field annotations, for the YAML reader's messages and checks.

``model_at`` finds the model a validation error points into (so an unknown key can be matched to
the keys it may be a misspelling of); ``partial`` keeps the parts of an invalid file that validate
on their own (so the checks of what a file means run in the same round as its type errors).
Generic: nothing here knows a sweep or a view.
"""

from __future__ import annotations

import types
from types import SimpleNamespace
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, Tag, ValidationError


def unwrap(tp: Any) -> Any:
    """A field annotation without ``Annotated`` and without ``| None``."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, types.UnionType):
            members = [m for m in get_args(tp) if m is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _union_tag(member: Any) -> Any:
    """The tag Pydantic gives a union member in error locations (its ``Tag``, its ``name`` default, or
    its class name), or None."""
    if get_origin(member) is Annotated:
        tag = next((m.tag for m in get_args(member)[1:] if isinstance(m, Tag)), None)
        if tag is not None:
            return tag
    member = unwrap(member)
    if _is_model(member):
        name = member.model_fields.get("name")
        return name.default if name is not None and isinstance(name.default, str) else member.__name__
    return None


def model_at(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The model class a Pydantic error location points into (for the keys an unknown key may be
    a misspelling of)."""
    tp: Any = root
    for part in loc:
        if isinstance(part, str) and part.startswith("function-"):
            continue
        tp = unwrap(tp)
        if _is_model(tp) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        elif get_origin(tp) is list and isinstance(part, int):
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        elif get_origin(tp) in (Union, types.UnionType):
            tp = next((m for m in get_args(tp) if _union_tag(m) == part), None)
            if tp is None:
                return None
        else:
            return None
    tp = unwrap(tp)
    return tp if _is_model(tp) else None


# --------------------------------------------------------------------------------------------
# What validates of an invalid model
# --------------------------------------------------------------------------------------------


def _attempt(cls: type[BaseModel], stub: dict[str, Any], name: str, value: Any, context: dict[str, Any]) -> Any:
    """One field validated alone, next to the ``stub``'s valid required fields; None if it fails."""
    try:
        return getattr(cls.model_validate({**stub, name: value}, context=context), name)
    except ValidationError:
        return None


def _is_section(tp: Any) -> bool:
    """A nested model whose fields all have defaults (calibration, evaluation, runtime): validated
    field by field, so one bad field does not hide the others from the cross-section checks."""
    tp = unwrap(tp)
    return _is_model(tp) and all(not f.is_required() for f in tp.model_fields.values())


def partial(cls: type[BaseModel], data: Any, context: dict[str, Any] | None = None,
            stub: dict[str, Any] | None = None) -> SimpleNamespace | None:
    """The parts of an invalid model that do validate on their own: an invalid field becomes None,
    an invalid list item None, a section (see ``_is_section``) a partial of its own. The checks of
    what a file means then run in the same round as its type errors: one `validate` reports every
    problem. ``stub``: the smallest valid values of ``cls``'s required fields, next to which one
    field is validated alone (with all its validators and constraints)."""
    if not isinstance(data, dict):
        return None
    context = context or {}
    parts: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        if name not in data:
            parts[name] = None if field.is_required() else field.get_default(call_default_factory=True)
        elif _is_section(field.annotation):
            parts[name] = partial(unwrap(field.annotation), data[name], context)
        else:
            value = data[name]
            parts[name] = _attempt(cls, stub or {}, name, value, context)
            if parts[name] is None and isinstance(value, list) and get_origin(unwrap(field.annotation)) is list:
                items = (_attempt(cls, stub or {}, name, [item], context) for item in value)
                parts[name] = [item[0] if item else None for item in items]
    return SimpleNamespace(**parts)
