"""The one error type of the bus, with a ``kind`` for counting.

Everything that arrives from the broker is untrusted: a bad topic or payload becomes a
``BusError`` that the adapter counts by ``kind``, logs once per kind and drops.  Nothing else
may escape the receive path, so a garbled message can neither crash nor wedge the daemon.
"""

from __future__ import annotations

from typing import Literal

from vnet.errors import VnetError

ErrorKind = Literal[
    "bad-topic",         # outside the tree, unknown shape, or a bad name in it
    "oversized",         # payload longer than its topic's limit
    "malformed",         # not strict JSON, missing/unknown keys, wrong types or values
    "unknown-version",   # a schema version this vnet does not read
    "wrong-address",     # payload names another host/lab/part than its topic
    "invalid-topology",  # a desired lab the topology loader refuses
    "stale",             # an older epoch (or sequence) than the one known: ignored
    "illegal-transition",  # a liveness event the peer table does not allow
]

ERROR_KINDS: tuple[ErrorKind, ...] = (
    "bad-topic", "oversized", "malformed", "unknown-version", "wrong-address",
    "invalid-topology", "stale", "illegal-transition")


class BusError(VnetError):
    """A message from the bus that vnet refuses; ``kind`` is one of ``ERROR_KINDS``."""

    def __init__(self, kind: ErrorKind, detail: str) -> None:
        self.kind: ErrorKind = kind
        self.detail = detail
        super().__init__(f"{kind}: {detail}")
