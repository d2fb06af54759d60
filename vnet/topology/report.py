"""Collecting problems with their ``FILE:LINE: KEY.PATH:`` prefix.

The loader reports every problem it finds rather than stopping at the first, so that a user
fixes a file in one round.  Problems are addressed by key path (``("nodes", "c1", "nics", 0)``)
and the reporter turns the path into a line through the index the YAML reader built.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

KeyPath = tuple[str | int, ...]


class _Invalid:
    """The type of ``INVALID``."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Final = _Invalid()
"""Stands for a value that was present but wrong, and whose problem is already reported:
later checks skip it instead of reporting follow-on problems."""


def format_path(path: KeyPath) -> str:
    """``("nodes", "c1", "nics", 0, "ip")`` -> ``nodes.c1.nics[0].ip``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def undefined(kind: str, name: str, defined: Iterable[str]) -> str:
    """``network 'offce' is not defined (defined: lab, office); did you mean 'office'?``"""
    names = sorted(defined)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{kind} {name!r} is not defined (defined: {', '.join(names) or 'none'}){hint}"


@dataclass
class Reporter:
    """Collects problems of one source; ``lines`` maps key paths to 1-based line numbers."""

    source: str
    lines: Mapping[KeyPath, int] = field(default_factory=dict)
    key_lines: Mapping[KeyPath, int] = field(default_factory=dict)
    raw: Mapping[KeyPath, str] = field(default_factory=dict)  # text of plain non-str scalars
    _problems: list[tuple[int, str]] = field(default_factory=list)

    def line(self, path: KeyPath) -> int:
        """The line of ``path``, or of its nearest ancestor that the file has."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return 1

    def error(self, path: KeyPath, message: str, *, line: int | None = None) -> None:
        """A problem with the value at ``path``."""
        self.at(self.line(path) if line is None else line, path, message)

    def key_error(self, path: KeyPath, message: str) -> None:
        """A problem with the key that ends ``path`` (unknown, duplicate, badly named)."""
        self.at(self.key_lines.get(path) or self.line(path), path, message)

    def missing(self, path: KeyPath, message: str) -> None:
        """A problem with a key that is absent: reported at its mapping's line."""
        self.at(self.line(path[:-1]), path, message)

    def at(self, line: int, path: KeyPath, message: str) -> None:
        where = f"{format_path(path)}: " if path else ""
        self._problems.append((line, f"{self.source}:{line}: {where}{message}"))

    @property
    def problems(self) -> list[str]:
        """The problems in file order (stable: same-line problems keep their order)."""
        return [text for _, text in sorted(self._problems, key=lambda p: p[0])]
