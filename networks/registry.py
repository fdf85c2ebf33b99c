"""A tiny name -> object registry with helpful errors (one per concept: archs, attentions)."""

from __future__ import annotations

from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps lower-case names to entries; unknown names raise ValueError listing the valid choices."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        key = name.lower()
        if key in self._entries:
            raise KeyError(f"{self.kind} {name!r} is already registered")
        self._entries[key] = entry
        return entry

    def get(self, name: str) -> T:
        key = name.lower() if isinstance(name, str) else name
        if key not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; valid choices: {', '.join(self.names())}")
        return self._entries[key]

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
