"""What long commands show while they work: one line that updates itself on a terminal, a
plain line per finished step otherwise (a log, CI), on stderr either way so the result on
stdout stays what scripts read.  ``vnet up`` and ``vnet down`` feed it vnetd's
``{"progress": ...}`` lines (``vnet.daemon.progress``); ``vnet test`` and ``vnet bench``
their own counts (``show``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

PAST = {"making": "made", "removing": "removed"}


def describe(event: Any) -> tuple[str, bool] | None:
    """An event as words, and whether it ends its wave; None if it is not one (a newer
    vnetd's event this vnet does not know is skipped, not an error)."""
    if not isinstance(event, dict):
        return None
    verb, kind, done, total = (event.get(k) for k in ("verb", "kind", "done", "total"))
    if (verb not in PAST or not isinstance(kind, str) or not isinstance(done, int)
            or not isinstance(total, int) or not 0 < done <= total):
        return None
    if done == total:
        return f"{PAST[verb]} {total} {kind}", True
    return f"{verb} {kind} {done}/{total}", False


def counted(what: str, done: int, total: int) -> str:
    """``4/6 expectations checked``: a count as ``vnet test`` shows it."""
    return f"{done}/{total} {what}"


class ProgressLine:
    """Shows events on ``stream`` as ``LABEL: TEXT``; ``close`` ends the updating line (if
    one is shown)."""

    def __init__(self, stream: TextIO, lab: str) -> None:
        self.stream = stream
        self.lab = lab
        self.terminal = stream.isatty()
        self.shown = False   # an updating line is on the terminal
        self.text = ""       # what it says

    def __call__(self, event: Any) -> None:
        described = describe(event)
        if described is not None:
            self.show(*described)

    def show(self, text: str, plain: bool = False) -> None:
        """``text`` as the updating line on a terminal; elsewhere as a line of its own when
        ``plain`` (a finished step), else not at all."""
        if self.terminal:
            self.stream.write(f"\r\x1b[K{self.lab}: {text}")
            self.shown, self.text = True, text
        elif plain:
            self.stream.write(f"{self.lab}: {text}\n")
        else:
            return
        self.stream.flush()

    @contextmanager
    def cleared(self) -> Iterator[None]:
        """The updating line taken away while other output is written, then shown again
        (so that a log line never lands in the middle of it)."""
        shown, text = self.shown, self.text
        self.close()
        try:
            yield
        finally:
            if shown:
                self.show(text)

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False
