"""A netdev's forwarding (FDB) and neighbour entries, read and written in batches over netlink.

Both are rtnetlink "neighbour" messages (RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH): FDB
entries in family AF_BRIDGE (MAC -> the underlay address a vxlan netdev sends its frames to),
ARP entries in AF_INET (IP -> MAC, from which a vxlan netdev's ARP proxy answers).  A
remote MAC's entry is one short message, so a netdev with 10,000 remote MACs needs 10,000
of them: sent one request at a time, each waiting for its acknowledgement (pyroute2's
calls), that is about a millisecond per entry here; the kernel itself (``bridge -batch``)
writes 10,000 in 0.07 s.  ``NeighSocket.apply`` therefore packs many requests into one
``send`` and reads their acknowledgements after it; each acknowledgement names its request
by sequence number, so the outcome of every single entry is known (``Failure``).  Dumps are
asked of the kernel for one netdev only (strict checking) and parsed here with ``struct``.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from vnet.errors import HostError

NETLINK_ROUTE = 0
SOL_NETLINK = 270
SO_RCVBUFFORCE = 33
NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK = 10, 11, 12
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP_INTR = 0x1, 0x2, 0x4, 0x10
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_CREATE, NLM_F_APPEND = 0x100, 0x400, 0x800
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200   # an ack: request cut to its header; TLVs follow
NLMSGERR_ATTR_MSG = 1
NDA_DST, NDA_LLADDR, NDA_IFINDEX = 1, 2, 8
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
AF_BRIDGE = 7

HEADER = struct.Struct("=IHHII")            # nlmsghdr: len, type, flags, seq, pid
NDMSG = struct.Struct("=BBHiHBB")           # ndmsg: family, pad, pad, ifindex, state, flags, type
ATTR = struct.Struct("=HH")                 # rtattr: len, type
ERROR = struct.Struct("=i")                 # nlmsgerr: the error, then the request's header
CHUNK = 256                                 # requests per send: their answers fit RCVBUF
RCVBUF = 4 << 20
DUMP_ATTEMPTS = 5
ALL_ZEROS = "00:00:00:00:00:00"


@dataclass(frozen=True)
class Request:
    """One entry to write or remove, and how to name it in an error."""

    what: str            # "forwarding entry 02:00:..:01 -> 10.90.0.3"
    message: bytes       # the netlink message, its sequence number still 0
    absent_is_fine: bool = False   # a removal: already gone is what was wanted


@dataclass(frozen=True)
class Failure:
    """A request the kernel refused: which entry, the errno and the kernel's words if any."""

    what: str
    code: int
    detail: str = ""

    def __str__(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.what}: {describe_errno(self.code)}{detail}"


def describe_errno(code: int) -> str:
    """An errno in words a user can act on (never "[Errno N] ...")."""
    words = {errno.EINVAL: "the kernel found it invalid", errno.ENOENT: "no such entry",
             errno.EEXIST: "the entry exists already", errno.ENODEV: "the interface is gone",
             errno.ENOBUFS: "the kernel ran out of buffer space",
             errno.ENOMEM: "the kernel ran out of memory",
             errno.EOPNOTSUPP: "the interface does not support it",
             errno.EPERM: "not permitted (vnetd needs CAP_NET_ADMIN)"}
    return words.get(code) or os.strerror(code).lower()


def _attr(kind: int, payload: bytes) -> bytes:
    length = ATTR.size + len(payload)
    return ATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def _message(kind: int, flags: int, family: int, ifindex: int, attrs: bytes, state: int = 0,
             ndm_flags: int = 0) -> bytes:
    body = NDMSG.pack(family, 0, 0, ifindex, state, ndm_flags, 0) + attrs
    return HEADER.pack(HEADER.size + len(body), kind, flags, 0, 0) + body


def _mac(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _ip(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def _family(address: str) -> int:
    return socket.AF_INET if ipaddress.ip_address(address).version == 4 else socket.AF_INET6


# -- the requests ----------------------------------------------------------------------------

def fdb_set(ifindex: int, mac: str, dst: str) -> Request:
    """A unicast MAC's only destination is ``dst`` (created, or moved there in one step)."""
    attrs = _attr(NDA_LLADDR, _mac(mac)) + _attr(NDA_DST, _ip(dst))
    return Request(f"forwarding entry {mac} -> {dst}", _message(
        RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, AF_BRIDGE,
        ifindex, attrs, NUD_PERMANENT, NTF_SELF))


def fdb_append(ifindex: int, mac: str, dst: str) -> Request:
    """One more destination of ``mac`` (the all-zeros MAC: one more flood peer)."""
    attrs = _attr(NDA_LLADDR, _mac(mac)) + _attr(NDA_DST, _ip(dst))
    return Request(f"forwarding entry {mac} -> {dst}", _message(
        RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND, AF_BRIDGE,
        ifindex, attrs, NUD_PERMANENT, NTF_SELF))


def fdb_delete(ifindex: int, mac: str, dst: str | None = None) -> Request:
    """Remove destination ``dst`` of ``mac`` (None: the MAC's whole entry)."""
    attrs = _attr(NDA_LLADDR, _mac(mac)) + (_attr(NDA_DST, _ip(dst)) if dst else b"")
    return Request(f"forwarding entry {mac}{f' -> {dst}' if dst else ''} (removal)", _message(
        RTM_DELNEIGH, NLM_F_REQUEST | NLM_F_ACK, AF_BRIDGE, ifindex, attrs, 0, NTF_SELF),
        absent_is_fine=True)


def neigh_set(ifindex: int, ip: str, mac: str) -> Request:
    """A permanent neighbour entry: ``ip`` is at ``mac`` (what the ARP proxy answers)."""
    attrs = _attr(NDA_DST, _ip(ip)) + _attr(NDA_LLADDR, _mac(mac))
    return Request(f"neighbour entry {ip} -> {mac}", _message(
        RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, _family(ip),
        ifindex, attrs, NUD_PERMANENT))


def neigh_delete(ifindex: int, ip: str) -> Request:
    return Request(f"neighbour entry {ip} (removal)", _message(
        RTM_DELNEIGH, NLM_F_REQUEST | NLM_F_ACK, _family(ip), ifindex, _attr(NDA_DST, _ip(ip))),
        absent_is_fine=True)


# -- parsing ---------------------------------------------------------------------------------

def split_messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, seq, payload) of each netlink message in one datagram."""
    offset = 0
    while offset + HEADER.size <= len(data):
        length, kind, flags, seq, _ = HEADER.unpack_from(data, offset)
        if length < HEADER.size or offset + length > len(data):
            raise HostError("a netlink answer from the kernel was cut short; try again")
        yield kind, flags, seq, data[offset + HEADER.size:offset + length]
        offset += (length + 3) & ~3


def attributes(data: bytes, offset: int) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    while offset + ATTR.size <= len(data):
        length, kind = ATTR.unpack_from(data, offset)
        if length < ATTR.size:
            break
        found[kind & 0x3FFF] = data[offset + ATTR.size:offset + length]
        offset += (length + 3) & ~3
    return found


def parse_ack(flags: int, payload: bytes) -> tuple[int, int, str]:
    """(the acknowledged request's seq, 0 or its errno, the kernel's message or "")."""
    (error,) = ERROR.unpack_from(payload)
    length, _, _, seq, _ = HEADER.unpack_from(payload, ERROR.size)
    detail = ""
    if flags & NLM_F_ACK_TLVS:
        echoed = HEADER.size if flags & NLM_F_CAPPED else (length + 3) & ~3
        tlvs = attributes(payload, ERROR.size + echoed)
        if NLMSGERR_ATTR_MSG in tlvs:
            detail = tlvs[NLMSGERR_ATTR_MSG].split(b"\0", 1)[0].decode(errors="replace")
    return seq, -error, detail


def parse_neigh(payload: bytes) -> tuple[int, str | None, str | None]:
    """(ifindex, NDA_DST as text or None, NDA_LLADDR as text or None) of a neighbour message."""
    _, _, _, ifindex, _, _, _ = NDMSG.unpack_from(payload)
    attrs = attributes(payload, NDMSG.size)
    dst, lladdr = attrs.get(NDA_DST), attrs.get(NDA_LLADDR)
    return (ifindex,
            str(ipaddress.ip_address(dst)) if dst is not None and len(dst) in (4, 16) else None,
            ":".join(f"{b:02x}" for b in lladdr) if lladdr is not None and len(lladdr) == 6
            else None)


# -- the socket ------------------------------------------------------------------------------

class NeighSocket:
    """A NETLINK_ROUTE socket in the calling thread's namespace, for dumps and batches."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  NETLINK_ROUTE)
        try:
            self.sock.bind((0, 0))
            for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK):
                self.sock.setsockopt(SOL_NETLINK, option, 1)
            try:   # root may exceed rmem_max: the answers to a chunk never overflow it
                self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        except BaseException:
            self.sock.close()
            raise
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> NeighSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_seq(self) -> int:
        self.seq = self.seq % 0x7FFFFFFF + 1
        return self.seq

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(1 << 20)
        except OSError as err:
            raise HostError(f"reading the kernel's netlink answers failed: "
                            f"{describe_errno(err.errno or 0)}; some entries' outcome is "
                            f"unknown, the next converge reads them back") from None

    def apply(self, requests: Sequence[Request]) -> list[Failure]:
        """Send every request, ``CHUNK`` per ``send``, and return those the kernel refused
        (a removal of an entry that is gone already is no failure)."""
        failures: list[Failure] = []
        for start in range(0, len(requests), CHUNK):
            chunk = requests[start:start + CHUNK]
            pending: dict[int, Request] = {}
            buffer = bytearray()
            for request in chunk:
                seq = self._next_seq()
                pending[seq] = request
                message = bytearray(request.message)
                struct.pack_into("=I", message, 8, seq)
                buffer += message
            self.sock.send(buffer)
            while pending:
                for kind, flags, _, payload in split_messages(self._recv()):
                    if kind != NLMSG_ERROR:
                        continue
                    acked, code, detail = parse_ack(flags, payload)
                    answered = pending.pop(acked, None)
                    if answered is None or code == 0:
                        continue
                    if code == errno.ENOENT and answered.absent_is_fine:
                        continue
                    failures.append(Failure(answered.what, code, detail))
        return failures

    def dump(self, family: int, ifindex: int) -> list[tuple[str | None, str | None]]:
        """(NDA_DST, NDA_LLADDR) of every entry of ``family`` on netdev ``ifindex`` (the FDB
        in AF_BRIDGE, the neighbour table in AF_INET/AF_INET6)."""
        for _ in range(DUMP_ATTEMPTS):
            entries, interrupted = self._dump_once(family, ifindex)
            if not interrupted:
                return entries
        raise HostError(f"the kernel's table of interface {ifindex} kept changing while it "
                        f"was read ({DUMP_ATTEMPTS} attempts); try again")

    def _dump_once(self, family: int, ifindex: int
                   ) -> tuple[list[tuple[str | None, str | None]], bool]:
        if family == AF_BRIDGE:      # the FDB dump filters by the header's ifindex
            message = _message(RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, family, ifindex, b"")
        else:                        # the neighbour dump by an NDA_IFINDEX attribute
            message = _message(RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, family, 0,
                               _attr(NDA_IFINDEX, struct.pack("=I", ifindex)))
        seq = self._next_seq()
        buffer = bytearray(message)
        struct.pack_into("=I", buffer, 8, seq)
        self.sock.send(buffer)
        entries: list[tuple[str | None, str | None]] = []
        interrupted = False
        while True:
            for kind, flags, got, payload in split_messages(self._recv()):
                if got != seq:
                    continue
                interrupted |= bool(flags & NLM_F_DUMP_INTR)
                if kind == NLMSG_DONE and len(payload) >= ERROR.size:
                    (error,) = ERROR.unpack_from(payload)
                    if error < 0:
                        raise HostError(f"the kernel could not list the entries of interface "
                                        f"{ifindex}: {describe_errno(-error)}")
                if kind == NLMSG_DONE:
                    return entries, interrupted
                if kind == NLMSG_ERROR:
                    _, code, detail = parse_ack(flags, payload)
                    raise HostError(f"the kernel refused to list the entries of interface "
                                    f"{ifindex}: {describe_errno(code)}"
                                    f"{f' ({detail})' if detail else ''}")
                if kind == RTM_NEWNEIGH:
                    index, dst, lladdr = parse_neigh(payload)
                    if index == ifindex:
                        entries.append((dst, lladdr))
