"""The NIC benchmark's frames, and what a far end does with them (pure).

The tiny guest (``sink``, ``send=MAC``: vnet/guest/tiny/main.c) and the benchmark's
kernel-only stand-in for it (``vnet.bench.tapend``) speak the same small protocol on the TAP,
so the host side of ``vnet.bench.vmnic`` measures both the same way:

* a **data** frame: EtherType 0x88b5 (IEEE local experimental), payload ``'D'`` and a
  big-endian 32-bit sequence number, padded to 60 bytes (a 64-byte frame on the wire, with
  its FCS);
* a **query** (``'Q'``): a sink answers it with a **count** frame (``'C'`` and the number of
  data frames it has counted), sent back to the query's source MAC.  Frames are handled in
  order, so the count covers every data frame that reached the sink before the query;
* a UDP datagram to port 7 of the far end's address is echoed (the round trip).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vnet.packet.inet import internet_checksum

ETH_BENCH = 0x88B5
FRAME_LEN = 60
DATA, QUERY, COUNT = ord("D"), ord("Q"), ord("C")
ECHO_PORT = 7
_HEAD = struct.Struct("!6s6sHBI")  # dst, src, EtherType, kind, value


def bench_frame(dst: bytes, src: bytes, kind: int, value: int = 0) -> bytes:
    """A 60-byte benchmark frame of ``kind`` (DATA, QUERY, COUNT) carrying ``value``."""
    return _HEAD.pack(dst, src, ETH_BENCH, kind, value & 0xFFFFFFFF).ljust(FRAME_LEN, b"\0")


@dataclass(frozen=True)
class BenchFrame:
    dst: bytes
    src: bytes
    kind: int
    value: int


def parse_bench(frame: bytes) -> BenchFrame | None:
    """The benchmark frame in ``frame``, or None if it is not one."""
    if len(frame) < _HEAD.size:
        return None
    dst, src, ethertype, kind, value = _HEAD.unpack_from(frame)
    if ethertype != ETH_BENCH:
        return None
    return BenchFrame(dst, src, kind, value)


def udp_echo(frame: bytes, mac: bytes, ip: bytes) -> bytes | None:
    """The echo of a UDP datagram to port 7 of ``ip`` at ``mac`` (as the tiny guest answers:
    addresses and ports swapped, TTL 64, no UDP checksum), or None for any other frame."""
    if len(frame) < 42 or frame[0:6] != mac or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 15) * 4
    (total,) = struct.unpack_from("!H", frame, 16)
    if frame[14] >> 4 != 4 or ihl < 20 or total < ihl + 8 or 14 + total > len(frame):
        return None
    if frame[23] != 17 or frame[30:34] != ip:
        return None
    l4 = 14 + ihl
    (dport,) = struct.unpack_from("!H", frame, l4 + 2)
    if dport != ECHO_PORT:
        return None
    header = bytearray(frame[14:l4])
    header[12:16], header[16:20] = frame[30:34], frame[26:30]
    header[8] = 64
    header[10:12] = b"\0\0"
    header[10:12] = struct.pack("!H", internet_checksum(bytes(header)))
    udp = bytearray(frame[l4:14 + total])
    udp[0:2], udp[2:4] = frame[l4 + 2:l4 + 4], frame[l4:l4 + 2]
    udp[6:8] = b"\0\0"
    return frame[6:12] + mac + frame[12:14] + bytes(header) + bytes(udp)


def sink_answer(frame: bytes, mac: bytes, ip: bytes, counted: int) -> tuple[int, bytes | None]:
    """What a sink does with a received frame: the new count of data frames, and the frame
    to send back (a count for a query, an echo for a UDP datagram to port 7) or None."""
    bench = parse_bench(frame)
    if bench is not None and bench.dst in (mac, b"\xff" * 6):
        if bench.kind == DATA:
            return counted + 1, None
        if bench.kind == QUERY:
            return counted, bench_frame(bench.src, mac, COUNT, counted)
        return counted, None
    return counted, udp_echo(frame, mac, ip)
