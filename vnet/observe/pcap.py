"""The classic pcap file format, written by hand: what ``vnet capture`` writes.

A file is a global header (magic ``0xa1b2c3d4``: microsecond timestamps, in this machine's
byte order as libpcap writes it; version 2.4; ``snaplen``; link type 1, Ethernet) and then
one record per frame: seconds, microseconds, the bytes stored, the frame's length on the
wire, the bytes.  tcpdump, Wireshark and scapy read it.  Pure: bytes in, bytes out, so
it is tested without a capture (``Writer`` only adds a file to write them to).
"""

from __future__ import annotations

import struct
from typing import BinaryIO

MAGIC = 0xA1B2C3D4          # microsecond timestamps
VERSION = (2, 4)
LINKTYPE_ETHERNET = 1
SNAPLEN = 262144            # libpcap's default: a GSO super-frame (64 KiB) fits whole
GLOBAL = struct.Struct("=IHHiIII")  # magic, major, minor, thiszone, sigfigs, snaplen, link
RECORD = struct.Struct("=IIII")     # seconds, microseconds, stored length, original length


def global_header(snaplen: int = SNAPLEN, linktype: int = LINKTYPE_ETHERNET) -> bytes:
    return GLOBAL.pack(MAGIC, *VERSION, 0, 0, snaplen, linktype)


def record(time_ns: int, frame: bytes, snaplen: int = SNAPLEN) -> bytes:
    """One frame's record, stamped ``time_ns`` (ns since the epoch); cut at ``snaplen``."""
    seconds, rest = divmod(time_ns, 1_000_000_000)
    stored = frame[:snaplen]
    return RECORD.pack(seconds, rest // 1000, len(stored), len(frame)) + stored


class Writer:
    """Writes a pcap to ``out``; ``flush_each``: flush after every record (a pipe to
    ``tcpdump -r -`` shows each frame as it comes)."""

    def __init__(self, out: BinaryIO, flush_each: bool = False) -> None:
        self.out = out
        self.flush_each = flush_each
        self.frames = 0
        out.write(global_header())
        out.flush()

    def write(self, time_ns: int, frame: bytes) -> None:
        self.out.write(record(time_ns, frame))
        self.frames += 1
        if self.flush_each:
            self.out.flush()

    def close(self) -> None:
        self.out.flush()
