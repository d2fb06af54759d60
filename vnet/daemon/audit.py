"""The audit trail: one JSON line for every change asked of vnetd's API, allowed or refused.

Each line says who (uid, user name, pid), what (the operation), which lab, the result
(``ok``, or the error the caller was given) and when (UTC, ISO 8601).  It goes to the log
(logger ``vnet.audit``: the journal under systemd) and is appended to ``audit.log`` in the
state directory.  The file is bounded: once it holds ``MAX_BYTES`` it is renamed to
``audit.log.1`` (replacing the one before) and a new one begun, so at most about twice
``MAX_BYTES`` is kept; the journal keeps the longer history.

``entry`` is pure (``now`` is an argument); ``AuditLog`` is the thin file-and-log edge.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vnet.errors import describe_os_error

log = logging.getLogger("vnet.audit")

MAX_BYTES = 1 << 20   # of audit.log before it is rotated to audit.log.1
FILE_NAME = "audit.log"


@dataclass(frozen=True)
class Peer:
    """Who is at the other end of an API connection (``SO_PEERCRED``, at connect)."""

    pid: int
    uid: int
    gid: int
    user: str | None          # None: the uid has no passwd entry
    gids: tuple[int, ...]     # the primary group and every supplementary one

    def describe(self) -> str:
        return f"uid {self.uid}" + (f", user {self.user}" if self.user else "")


def entry(peer: Peer, operation: str, lab: str | None, error: str | None,
          now: float) -> dict[str, Any]:
    """The audit record of one request (``error`` None: it succeeded)."""
    return {"time": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
            "uid": peer.uid, "user": peer.user, "pid": peer.pid, "op": operation, "lab": lab,
            "result": "ok" if error is None else "error", "error": error}


class AuditLog:
    """Appends audit records to ``path`` (rotated at ``max_bytes``) and to the log."""

    def __init__(self, path: Path | None, max_bytes: int = MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.failed = False   # said once in the log, not on every request

    def record(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), default=str)
        log.info("audit %s", line)
        if self.path is None:
            return
        try:
            self._append(line.encode() + b"\n")
            self.failed = False
        except OSError as err:
            if not self.failed:
                log.error("cannot write the audit file %s: %s (records go to the log only)",
                          self.path, describe_os_error(err))
            self.failed = True

    def _append(self, data: bytes) -> None:
        assert self.path is not None
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(data) > self.max_bytes:
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
