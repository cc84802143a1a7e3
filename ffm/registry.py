"""One registry per seam (tasks, methods, strategies, client mods, ...): the only place a name is matched.

Adding a capability is one new file plus one ``register`` line; an unknown name is a ConfigError that
lists what is registered, a duplicate name is refused when the module that registers it is imported.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Generic, TypeVar

from ffm.errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Registry(Generic[T]):
    """Entries by name for the config key ``key`` (e.g. ``method.name``).

    Names are listed sorted, unless ``ordered``: then in the order they were registered (sections, checks).
    """

    def __init__(self, key: str, *, ordered: bool = False) -> None:
        self.key = key
        self.ordered = ordered
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name`` (lower case, digits, underscores); a second one of that name is refused."""
        if not _NAME.match(name):
            raise ValueError(f"{self.key}: '{name}' is not a valid name (lower case, digits, underscores)")
        if name in self._entries:
            raise ValueError(f"{self.key}: '{name}' is registered twice")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a test's toy plug-in leaves the registry as it found it)."""
        self._entries.pop(name, None)

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise ConfigError(f"{self.key}: '{name}' is not one of {', '.join(self.names())}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """The registered names (sorted, or in registration order when ``ordered``)."""
        return list(self._entries) if self.ordered else sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """(name, entry) pairs in :meth:`names` order."""
        return [(name, self._entries[name]) for name in self.names()]
