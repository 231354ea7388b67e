"""One small typed registry, used for every pluggable strategy (weighting, fusion rules, rewards, ...).

A strategy is a plain typed function registered under a name; looking up an unknown name raises an
error that lists the valid names and suggests the closest ones.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from lmfuse.errors import LmfuseError

T = TypeVar("T")


class UnknownNameError(LmfuseError, KeyError, ValueError):
    """Raised for a name that no registry entry has; the message suggests close names. An `LmfuseError`:
    a name comes from a user (a flag, a recipe, a request), so it is theirs to fix (a 400, exit 2)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def suggest(name: str, valid: list[str] | tuple[str, ...], what: str) -> str:
    """A message naming the bad value, the closest valid ones and the full list."""
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {what} {name!r}.{hint} Valid: {', '.join(sorted(valid))}."


def check_choice(value: str, valid: Sequence[str], what: str) -> str:
    """``value`` when it is one of ``valid`` (a fixed set of names with nothing to register), else the error a
    registry raises for an unknown name, with "did you mean"."""
    if value not in valid:
        raise UnknownNameError(suggest(value, list(valid), what))
    return value


class Registry(Generic[T]):
    """A name -> strategy mapping with "did you mean" errors."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(suggest(name, list(self._entries), self.what)) from None

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)
