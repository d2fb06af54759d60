"""Collecting problems with their ``FILE:LINE: KEY.PATH:`` prefix.

The loader reports every problem it finds rather than stopping at the first, so that a user
fixes a file in one round.  Problems are addressed by key path (``("nodes", "c1", "nics", 0)``)
and the reporter turns the path into a line through the index the YAML reader built.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Final

KeyPath = tuple[str | int, ...]

QUOTE_LIMIT = 60
"""The most characters of a value from a file that a message shows: a message quotes the
offending value to point at it, not to echo a megabyte back."""
PATH_LIMIT = 200
"""The same for a file's path, which a message shows whole when it can (to copy it into a
command, chmod 600 PATH): any real path is shorter."""
MAX_PROBLEMS = 100
"""The most problems one file reports; the rest are counted.  Fixing the first hundred is the
next step anyway, and a file of 100,000 bad values must not print 100,000 lines."""
MAX_SUGGESTION_WORK = 50_000
"""The most names that "did you mean" look-ups compare, in all, for one file (about 0.3 s):
each compares the name with every defined one (difflib), so 8,000 undefined names among
4,000 defined ones would take minutes.  Past it, messages go without the suggestion."""
_NAMES_SHOWN = 10


class _Invalid:
    """The type of ``INVALID``."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Final = _Invalid()
"""Stands for a value that was present but wrong, and whose problem is already reported:
later checks skip it instead of reporting follow-on problems."""


def clip(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` as it is, or its first ``limit`` characters, an ellipsis and its length:
    ``xxxx… (1,200,000 characters)``."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters)"


def quote(value: object) -> str:
    """A value from a file as every message shows it: ``repr`` (strings in quotes, so that
    spaces show), cut as ``clip`` cuts: ``'xxxx'… (1,200,000 characters)``.  Also for what
    ``repr`` cannot show: an integer of more than 4,300 digits."""
    if isinstance(value, str):
        if len(value) <= QUOTE_LIMIT:
            return repr(value)
        return f"{value[:QUOTE_LIMIT]!r}… ({len(value):,} characters)"
    if isinstance(value, int) and not isinstance(value, bool):
        return _integer(value)
    try:
        return clip(repr(value))
    except ValueError:  # a list holding a huge integer, say
        return f"a {type(value).__name__}"


def _integer(value: int) -> str:
    try:
        text = str(value)
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
        digits = math.floor((value.bit_length() - 1) * math.log10(2)) + 1
        return f"an integer of about {digits:,} digits"
    if len(text) <= QUOTE_LIMIT:
        return text
    return f"{text[:QUOTE_LIMIT]}… ({len(text):,} digits)"


def format_path(path: KeyPath) -> str:
    """``("nodes", "c1", "nics", 0, "ip")`` -> ``nodes.c1.nics[0].ip``; a long key is cut."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{clip(part)}" if out else clip(part)
    return out


@dataclass
class Reporter:
    """Collects problems of one source; ``lines`` maps key paths to 1-based line numbers."""

    source: str
    lines: Mapping[KeyPath, int] = field(default_factory=dict)
    key_lines: Mapping[KeyPath, int] = field(default_factory=dict)
    raw: Mapping[KeyPath, str] = field(default_factory=dict)  # text of plain non-str scalars
    _problems: list[tuple[int, str]] = field(default_factory=list)
    _seen: set[tuple[int, str]] = field(default_factory=set)
    _suggested: int = 0  # names compared by near-miss look-ups
    _sorted: dict[int, tuple[Collection[str], list[str]]] = field(default_factory=dict)

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

    def undefined(self, kind: str, name: str, defined: Collection[str]) -> str:
        """``network 'offce' is not defined (defined: lab, office); did you mean 'office'?``

        ``defined`` is sorted once per collection (callers pass the same one each time);
        near misses are looked up within ``MAX_SUGGESTION_WORK``."""
        cached = self._sorted.get(id(defined))
        if cached is None or cached[0] is not defined or len(cached[1]) != len(defined):
            cached = self._sorted[id(defined)] = (defined, sorted(defined))
        names = cached[1]
        close: list[str] = []
        if len(name) <= QUOTE_LIMIT and self._suggested + len(names) <= MAX_SUGGESTION_WORK:
            self._suggested += len(names)
            close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {quote(close[0])}?" if close else ""
        shown = ", ".join(clip(n) for n in names[:_NAMES_SHOWN]) or "none"
        if len(names) > _NAMES_SHOWN:
            shown += f", … ({len(names):,} in all)"
        return f"{kind} {quote(name)} is not defined (defined: {shown}){hint}"

    def at(self, line: int, path: KeyPath, message: str) -> None:
        where = f"{format_path(path)}: " if path else ""
        problem = (line, f"{self.source}:{line}: {where}{message}")
        if problem not in self._seen:  # one bad value that many aliases insert: said once
            self._seen.add(problem)
            self._problems.append(problem)

    @property
    def problems(self) -> list[str]:
        """The problems in file order (stable: same-line problems keep their order), at most
        ``MAX_PROBLEMS`` and a line that counts the others."""
        ordered = [text for _, text in sorted(self._problems, key=lambda p: p[0])]
        if len(ordered) <= MAX_PROBLEMS:
            return ordered
        more = len(ordered) - MAX_PROBLEMS
        return [*ordered[:MAX_PROBLEMS], f"{self.source}: and {more:,} more problem"
                f"{'' if more == 1 else 's'} after these: fix these first"]
