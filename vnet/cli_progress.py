"""What ``vnet up`` and ``vnet down`` show while vnetd works: one line that updates itself on
a terminal, a plain line per finished wave otherwise (a log, CI), on stderr either way so the
result on stdout stays what scripts read.  The events are vnetd's ``{"progress": ...}``
lines (``vnet.daemon.progress``)."""

from __future__ import annotations

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


class ProgressLine:
    """Shows events on ``stream``; ``close`` ends the updating line (if one is shown)."""

    def __init__(self, stream: TextIO, lab: str) -> None:
        self.stream = stream
        self.lab = lab
        self.terminal = stream.isatty()
        self.shown = False   # an updating line is on the terminal

    def __call__(self, event: Any) -> None:
        described = describe(event)
        if described is None:
            return
        text, ends_wave = described
        if self.terminal:
            self.stream.write(f"\r\x1b[K{self.lab}: {text}")
            self.shown = True
        elif ends_wave:
            self.stream.write(f"{self.lab}: {text}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False
