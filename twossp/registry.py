"""One registry mechanism for every named concept (methods, families): a name maps to an entry,
and parts of an entry that need heavy imports (torch, an adapter module) are ``Lazy`` references,
resolved on first use, so that listing or validating names never imports them. An unknown name
raises ``UnknownName``, which lists the registered names and the closest one."""

from __future__ import annotations

import importlib
from typing import Any, Generic, Iterator, Mapping, TypeVar

from twossp.errors import UnknownName

T = TypeVar("T")


class Lazy:
    """A ``"package.module:attribute"`` reference, imported when ``load`` is first called."""

    def __init__(self, path: str) -> None:
        module, _, attribute = path.partition(":")
        if not module or not attribute:
            raise ValueError(f"a lazy reference is 'module:attribute', got {path!r}")
        self.path = path
        self._value: Any = None

    def load(self) -> Any:
        if self._value is None:
            module, attribute = self.path.split(":")
            self._value = getattr(importlib.import_module(module), attribute)
        return self._value

    def __repr__(self) -> str:
        return f"Lazy({self.path!r})"


class Registry(Mapping[str, T], Generic[T]):
    """Name -> entry, in registration order. ``registry[name]`` raises ``UnknownName``."""

    def __init__(self, kind: str, entries: Mapping[str, T]) -> None:
        self.kind = kind
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownName(self.kind, name, list(self._entries)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
