"""Port mirrors (SPAN) for ``vnet capture``: copies of a port's frames as on its wire.

A mirror costs nothing on a port nobody captures: no check, no branch.  The first mirror of
a direction puts a wrapper in place of the port's ``deliver`` (what it receives: copied
before classification, its 802.1Q tag put back where the kernel took it off) or of its
``emit`` (what it sends: after egress tagging, so a trunk's copy is tagged and an access
port's is not); the last one gone puts the port's own back (``install``).  A port with
mirrors holds them in its ``mirrors`` tuple, empty by default.

A mirror never stalls the datapath: it hands each copy to its ``Sink`` (a control
connection given over to the capture, ``vnet.datapath.control.Stream``), which takes it
only while its bounded buffer has room; a copy refused is dropped and counted, and every
record carries the count so far, so the reader can say how many it missed.

The stream is a sequence of records, each a ``HEADER`` (kind, direction, frames dropped so
far, payload length, wall-clock time in ns) and its payload: a ``FRAME`` record's payload is
the frame; the last record, ``END``, carries why the mirror ended (UTF-8).  ``Records``
decodes them incrementally (vnetd relays the bytes; the CLI decodes and writes pcap).

(Runs under PyPy 3.9 too: no ``X | Y`` outside annotations.)
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from vnet.packet import insert_tag

if TYPE_CHECKING:
    from vnet.datapath.ports import Port

HEADER = struct.Struct("!BBxxIIQ")  # kind, direction, dropped so far, payload length, ns
FRAME, END = 0, 1
IN, OUT = 0, 1
DIRECTION_NAMES = ("in", "out")
DIRECTIONS = ("in", "out", "both")   # what a mirror may copy
MAX_PAYLOAD = 1 << 20                # a record longer than this is a broken stream


class Sink(Protocol):
    def write(self, data: bytes) -> bool:
        """Queue ``data``; False: no room (the datapath does not wait)."""

    def end(self, data: bytes) -> None:
        """Queue ``data`` whatever the room, then close once it is sent."""


class Mirror:
    """One capture of one port: ``direction`` one of ``DIRECTIONS``."""

    __slots__ = ("direction", "dropped", "frames", "sink")

    def __init__(self, direction: str, sink: Sink) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, "
                             f"not {direction!r}")
        self.direction = direction
        self.sink = sink
        self.dropped = 0    # copies the sink had no room for
        self.frames = 0     # copies it took

    def wants(self, direction: int) -> bool:
        return self.direction in ("both", DIRECTION_NAMES[direction])

    def copy(self, direction: int, frame: bytes, time_ns: int) -> None:
        record = HEADER.pack(FRAME, direction, self.dropped & 0xFFFFFFFF, len(frame),
                             time_ns) + frame
        if self.sink.write(record):
            self.frames += 1
        else:
            self.dropped += 1

    def end(self, reason: str) -> None:
        """The last record: the final drop count and why, then the sink closes."""
        text = reason.encode()
        self.sink.end(HEADER.pack(END, 0, self.dropped & 0xFFFFFFFF, len(text),
                                  time.time_ns()) + text)


def install(port: Port, mirrors: tuple[Mirror, ...]) -> None:
    """Give ``port`` these mirrors: wrappers where a mirror wants copies, the port's own
    ``deliver`` and ``emit`` back where none does."""
    port.mirrors = mirrors
    ins = tuple(m for m in mirrors if m.wants(IN))
    outs = tuple(m for m in mirrors if m.wants(OUT))
    port.deliver = _receiving(port.own_deliver, ins) if ins else port.own_deliver
    if outs:
        port.emit = _sending(port, outs)  # type: ignore[method-assign]
    else:
        port.__dict__.pop("emit", None)   # the class's method again: no wrapper at all


def _receiving(deliver: Any, mirrors: tuple[Mirror, ...]) -> Any:
    clock = time.time_ns

    def mirrored_deliver(hdr: bytes, frame: bytes, tci: int | None, now: float) -> object:
        wire = bytes(frame) if tci is None else insert_tag(bytes(frame), tci)
        stamp = clock()
        for mirror in mirrors:
            mirror.copy(IN, wire, stamp)
        return deliver(hdr, frame, tci, now)

    return mirrored_deliver


def _sending(port: Port, mirrors: tuple[Mirror, ...]) -> Any:
    clock, emit = time.time_ns, type(port).emit

    def mirrored_emit(hdr: bytes, frame: bytes) -> None:
        stamp = clock()
        wire = bytes(frame)
        for mirror in mirrors:
            mirror.copy(OUT, wire, stamp)
        emit(port, hdr, frame)

    return mirrored_emit


@dataclass(frozen=True)
class Record:
    kind: int
    direction: int
    dropped: int       # frames dropped for this capture before this record
    time_ns: int
    data: bytes        # the frame; for END, why the mirror ended


class StreamError(ValueError):
    """Bytes that are no mirror stream."""


class Records:
    """An incremental decoder: ``feed`` bytes as they come, get the whole records."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[Record]:
        buffer = self.buffer
        buffer += data
        records = []
        while len(buffer) >= HEADER.size:
            kind, direction, dropped, length, time_ns = HEADER.unpack_from(buffer)
            if kind not in (FRAME, END) or direction not in (IN, OUT) or \
                    length > MAX_PAYLOAD:
                raise StreamError(f"not a mirror record (kind {kind}, direction {direction}, "
                                  f"length {length})")
            end = HEADER.size + length
            if len(buffer) < end:
                break
            records.append(Record(kind, direction, dropped, time_ns,
                                  bytes(buffer[HEADER.size:end])))
            del buffer[:end]
        return records
