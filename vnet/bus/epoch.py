"""Epochs: the number that makes a host's newer messages win over its older ones.

A host takes a new epoch for every connection to the broker: ``max(wall-clock ns, last + 1)``
with ``last`` persisted in its state directory.  Why each piece:

* per connection, not per process: after a fast reconnect the broker may publish the old
  connection's Will (``lost``) *after* the new connection's ``online``; the Will carries the
  old, smaller epoch, so peers ignore it;
* wall-clock nanoseconds: a host whose state directory is new (or lost) still starts above
  every epoch it used before, as long as its clock is roughly right; monotonic clocks restart
  at boot and cannot give that;
* ``last + 1`` from a file: a clock stepped backwards (RTC off, NTP correcting at boot) still
  gives a larger epoch than the last one used.

Peers only compare one host's epochs with each other, never with their own clocks, so clock
skew between hosts does not matter.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from vnet.bus.messages import MAX_EPOCH


def next_epoch(now_ns: int, last: int | None) -> int:
    """The epoch after ``last`` at wall-clock time ``now_ns`` (pure)."""
    epoch = max(now_ns, (last or 0) + 1, 1)
    if epoch > MAX_EPOCH:
        raise ValueError(f"epoch {epoch} beyond {MAX_EPOCH}: the clock or the epoch file is "
                         "wrong; fix the clock and delete the epoch file")
    return epoch


class EpochFile:
    """The last epoch a host used, in a small file (written atomically before it is used)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def last(self) -> int | None:
        """The recorded epoch; ``None`` when the file is missing or unreadable (the wall clock
        then decides, which is right unless the clock is also far behind)."""
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return int(text) if text.isdigit() and len(text) <= 19 else None

    def advance(self, now_ns: int) -> int:
        """Choose the next epoch and record it, so that no later call can reuse it."""
        epoch = next_epoch(now_ns, self.last())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="ascii") as f:
            f.write(f"{epoch}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return epoch
