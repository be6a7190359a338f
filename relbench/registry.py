"""One generic registry with lazy entries.

Entries are registered as ``"module:attr"`` strings together with the metadata that listings need,
so that ``relbench --help`` and ``relbench methods list`` import no torch. The target is imported
on first use. Unknown names answer with close matches and the full list, as in
lm-evaluation-harness's registry.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from relbench.errors import RelbenchError, UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "package.module:attr"
    summary: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Name -> lazily imported object (a class, usually)."""

    def __init__(self, kind: str):
        self.kind = kind  # "method", "metric", ... used in messages
        self._entries: dict[str, Entry] = {}
        self._loaded: dict[str, T] = {}

    def register(self, name: str, target: str | T, summary: str = "", **meta: Any) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered ({self._entries[name].target})")
        if isinstance(target, str):
            if ":" not in target:
                raise ValueError(f"lazy target must look like 'module:attr', got {target!r}")
            entry = Entry(name, target, summary, dict(meta))
        else:
            entry = Entry(name, f"{target.__module__}:{getattr(target, '__qualname__', name)}", summary, dict(meta))
            self._loaded[name] = target
        self._entries[name] = entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def get(self, name: str) -> T:
        entry = self.entry(name)
        if name not in self._loaded:
            module_name, _, attr = entry.target.partition(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise RelbenchError(
                    f"{self.kind} {name!r} needs a package that is not installed ({exc}); "
                    f"see the README for its optional extras"
                ) from exc
            obj: Any = module
            for part in attr.split("."):
                obj = getattr(obj, part)
            self._loaded[name] = obj
        return self._loaded[name]

    def unknown_message(self, name: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(names) or '(none)'}"
