"""Kernel flows on a netdev's ingress: a clsact qdisc, cls_bpf filters, act_mirred redirects.

A kernel flow (see ``vnet.datapath.offload``) is one cls_bpf filter in classic-BPF mode on
the in-port's ingress whose program (an array of ``struct sock_filter``, built elsewhere)
matches the flow's frames and whose one action is an act_mirred egress redirect to the
out-port's netdev.  The datapath may run on PyPy without pyroute2, so the requests are
encoded here with ``struct`` (``encode_*``, pure) as ``tc`` sends them, and sent on one
NETLINK_ROUTE socket (``Tc``) in the namespace of the thread that opens it, with extended
acks so that a refusal carries the kernel's own words.

(Runs under PyPy 3.9 too: no ``X | Y`` outside annotations, ``socket.timeout``.)
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

from vnet.errors import HostError
from vnet.host import cbpf
from vnet.host.neigh import (
    HEADER,
    NETLINK_CAP_ACK,
    NETLINK_EXT_ACK,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    SOL_NETLINK,
    attributes,
    parse_ack,
    split_messages,
)
from vnet.host.rtnl import NLM_F_EXCL, _attr

RTM_NEWQDISC, RTM_DELQDISC = 36, 37
RTM_NEWTFILTER, RTM_DELTFILTER, RTM_GETTFILTER = 44, 45, 46
TC_H_CLSACT = 0xFFFFFFF1          # pkt_sched.h: TC_H_CLSACT = TC_H_INGRESS
CLSACT_HANDLE = 0xFFFF0000        # TC_H_MAJ(TC_H_CLSACT)
CLSACT_INGRESS = 0xFFFFFFF2       # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)
ETH_P_ALL = 0x0003
TCA_KIND, TCA_OPTIONS = 1, 2                                     # rtnetlink.h
TCA_BPF_ACT, TCA_BPF_OPS_LEN, TCA_BPF_OPS = 1, 4, 5              # pkt_cls.h
TCA_ACT_KIND, TCA_ACT_OPTIONS, TCA_ACT_STATS = 1, 2, 4           # pkt_cls.h
TCA_MIRRED_PARMS = 2                                             # tc_act/tc_mirred.h
TCA_EGRESS_REDIR = 1
TC_ACT_STOLEN = 4
TCA_STATS_BASIC, TCA_STATS_PKT64 = 1, 8                          # gen_stats.h
TCMSG = struct.Struct("=BxxxiIII")    # tcmsg: family, pad, ifindex, handle, parent, info
MIRRED = struct.Struct("=IIiiiiI")    # tc_mirred: tc_gen (index, capab, action, refcnt,
                                      # bindcnt), eaction, ifindex
INSN = cbpf.SOCK_FILTER              # sock_filter: code, jt, jf, k
NEVER = cbpf.encode((cbpf.Insn(cbpf.RET_K, 0, 0, cbpf.REJECT),))   # matches no frame
PROBE_HANDLE, PROBE_PRIO = 0xFFFFFFFF, 0xFFFF
TIMEOUT = 5.0
# tc ingress (and so act_mirred's count) sees a frame from its network header on: a
# redirected frame's bytes are counted without its Ethernet header (checked by
# tests/integration/test_host_tcflow.py on this kernel)
COUNTED_ETH_HEADER = 0


@dataclass(frozen=True)
class FlowStats:
    """What one kernel flow's action has seen since it was installed."""

    packets: int
    bytes: int


class TcError(HostError):
    """A refusal, with its errno kept for callers that tell "none there" apart."""

    def __init__(self, message: str, code: int, detail: str) -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail


# -- the requests (pure) ---------------------------------------------------------------------

def _tcmsg(ifindex: int, handle: int, parent: int, info: int) -> bytes:
    return TCMSG.pack(socket.AF_UNSPEC, ifindex, handle, parent, info)


def _filter_info(prio: int) -> int:
    return (prio << 16) | socket.htons(ETH_P_ALL)


def _kind(name: str) -> bytes:
    return _attr(TCA_KIND, name.encode() + b"\0")


def encode_qdisc(kind: int, ifindex: int) -> tuple[int, int, bytes]:
    """(type, flags, body) adding (RTM_NEWQDISC) or deleting the clsact qdisc."""
    flags = NLM_F_REQUEST | NLM_F_ACK
    if kind == RTM_NEWQDISC:
        flags |= NLM_F_CREATE | NLM_F_EXCL
    return kind, flags, _tcmsg(ifindex, CLSACT_HANDLE, TC_H_CLSACT, 0) + _kind("clsact")


def encode_mirred(to_ifindex: int) -> bytes:
    """The action list (TCA_BPF_ACT's payload): one mirred egress redirect, order 1."""
    parms = MIRRED.pack(0, 0, TC_ACT_STOLEN, 0, 0, TCA_EGRESS_REDIR, to_ifindex)
    action = (_attr(TCA_ACT_KIND, b"mirred\0")
              + _attr(TCA_ACT_OPTIONS, _attr(TCA_MIRRED_PARMS, parms)))
    return _attr(1, action)


def encode_add_filter(ifindex: int, handle: int, prio: int, program: bytes,
                      to_ifindex: int | None) -> tuple[int, int, bytes]:
    """RTM_NEWTFILTER of a classic-BPF cls_bpf filter on the clsact's ingress, whose action
    redirects to ``to_ifindex`` (None: no action, for ``probe``)."""
    if not program or len(program) % INSN.size:
        raise ValueError(f"a classic BPF program is whole {INSN.size}-byte instructions, "
                         f"not {len(program)} bytes")
    options = (_attr(TCA_BPF_OPS_LEN, struct.pack("=H", len(program) // INSN.size))
               + _attr(TCA_BPF_OPS, program))
    if to_ifindex is not None:
        options += _attr(TCA_BPF_ACT, encode_mirred(to_ifindex))
    body = (_tcmsg(ifindex, handle, CLSACT_INGRESS, _filter_info(prio)) + _kind("bpf")
            + _attr(TCA_OPTIONS, options))
    return RTM_NEWTFILTER, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body


def encode_delete_filter(ifindex: int, handle: int, prio: int) -> tuple[int, int, bytes]:
    body = _tcmsg(ifindex, handle, CLSACT_INGRESS, _filter_info(prio)) + _kind("bpf")
    return RTM_DELTFILTER, NLM_F_REQUEST | NLM_F_ACK, body


def encode_dump_filters(ifindex: int) -> tuple[int, int, bytes]:
    return RTM_GETTFILTER, NLM_F_REQUEST | NLM_F_DUMP, _tcmsg(ifindex, 0, CLSACT_INGRESS, 0)


# -- the answers (pure) ----------------------------------------------------------------------

def parse_filter(payload: bytes) -> tuple[int, int, FlowStats | None] | None:
    """(prio, handle, its first action's counts or None) of an RTM_NEWTFILTER payload;
    None for a chain head (handle 0: one per prio and protocol, no filter of its own)."""
    _family, _ifindex, handle, _parent, info = TCMSG.unpack_from(payload)
    if handle == 0:
        return None
    attrs = attributes(payload, TCMSG.size)
    options = attributes(attrs.get(TCA_OPTIONS, b""), 0)
    actions = attributes(options.get(TCA_BPF_ACT, b""), 0)
    for order in sorted(actions):
        stats = attributes(attributes(actions[order], 0).get(TCA_ACT_STATS, b""), 0)
        basic = stats.get(TCA_STATS_BASIC, b"")
        if len(basic) < 12:
            continue
        octets, packets = struct.unpack_from("=QI", basic)
        pkt64 = stats.get(TCA_STATS_PKT64, b"")
        if len(pkt64) >= 8:
            (packets,) = struct.unpack_from("=Q", pkt64)
        return info >> 16, handle, FlowStats(packets, octets)
    return info >> 16, handle, None


def _words(code: int, detail: str) -> str:
    text = os.strerror(code) if code > 0 else f"error {code}"
    return f"{text} ({detail})" if detail else text


# -- the socket ------------------------------------------------------------------------------

class Tc:
    """One NETLINK_ROUTE socket in the namespace of the thread that opens it, for the kernel
    flows of any netdev there.  ``with Tc() as tc:`` or ``open()`` / ``close()``."""

    def __init__(self, timeout: float = TIMEOUT) -> None:
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.seq = 0

    def open(self) -> Tc:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             socket.NETLINK_ROUTE)
        try:
            sock.settimeout(self.timeout)
            sock.bind((0, 0))
            for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
                sock.setsockopt(SOL_NETLINK, option, 1)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        return self

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> Tc:
        return self.open() if self.sock is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the exchange

    def _send(self, what: str, request: tuple[int, int, bytes]) -> int:
        if self.sock is None:
            raise HostError(f"cannot {what}: the netlink socket is not open")
        kind, flags, body = request
        self.seq = self.seq % 0x7FFFFFFF + 1
        try:
            self.sock.send(HEADER.pack(HEADER.size + len(body), kind, flags, self.seq, 0)
                           + body)
        except OSError as err:
            raise HostError(f"cannot {what}: {_words(err.errno or 0, '')}") from None
        return self.seq

    def _recv(self, what: str) -> bytes:
        assert self.sock is not None
        try:
            return self.sock.recv(1 << 16)
        except socket.timeout:   # noqa: UP041 - not TimeoutError on PyPy 3.9 (the datapath's)
            raise HostError(f"cannot {what}: the kernel did not answer in "
                            f"{self.timeout:g} s") from None
        except OSError as err:
            raise HostError(f"cannot {what}: reading the kernel's answer failed: "
                            f"{_words(err.errno or 0, '')}") from None

    def _call(self, what: str, request: tuple[int, int, bytes],
              fine: frozenset[int] = frozenset()) -> None:
        """Send one request and wait for its ack; a refusal whose errno is in ``fine`` is
        taken as done, any other raises ``TcError`` naming ``what``."""
        seq = self._send(what, request)
        while True:
            for kind, flags, got, payload in split_messages(self._recv(what)):
                if kind != NLMSG_ERROR or got != seq:
                    continue
                _, code, detail = parse_ack(flags, payload)
                if code == 0 or code in fine:
                    return
                raise TcError(f"cannot {what}: {_words(code, detail)}", code, detail)

    # -- the API

    def reset_ingress(self, ifindex: int) -> None:
        """A fresh clsact qdisc on ``ifindex`` (any earlier one, and its filters, gone)."""
        self.remove_ingress(ifindex)
        self._call(f"add a clsact qdisc on ifindex {ifindex}",
                   encode_qdisc(RTM_NEWQDISC, ifindex))

    def remove_ingress(self, ifindex: int) -> None:
        """No clsact qdisc (so no kernel flow) on ``ifindex``; none there, or no netdev, is
        fine (ENOENT: no ingress queue or none of its qdiscs; EINVAL: another one there,
        such as an ``ingress`` qdisc, which is left alone: ``reset_ingress`` then refuses)."""
        self._call(f"remove the clsact qdisc of ifindex {ifindex}",
                   encode_qdisc(RTM_DELQDISC, ifindex),
                   frozenset({errno.ENOENT, errno.EINVAL, errno.ENODEV}))

    def add_redirect(self, ifindex: int, handle: int, prio: int, program: bytes,
                     to_ifindex: int) -> None:
        """Frames arriving on ``ifindex`` that ``program`` matches leave by ``to_ifindex``."""
        self._call(f"add kernel flow redirect on ifindex {ifindex} to {to_ifindex} "
                   f"(prio {prio}, handle {handle:#x})",
                   encode_add_filter(ifindex, handle, prio, program, to_ifindex))

    def delete_filter(self, ifindex: int, handle: int, prio: int) -> None:
        """The filter is gone: already gone is fine, and so is its netdev gone (ENODEV) or
        its clsact (EINVAL, "Parent Qdisc doesn't exists": the request itself is fixed)."""
        self._call(f"delete kernel flow on ifindex {ifindex} (prio {prio}, handle "
                   f"{handle:#x})", encode_delete_filter(ifindex, handle, prio),
                   frozenset({errno.ENOENT, errno.ENODEV, errno.EINVAL}))

    def filter_stats(self, ifindex: int) -> dict[tuple[int, int], FlowStats]:
        """Each kernel flow's counts on ``ifindex``, by (prio, handle)."""
        what = f"read the kernel flows of ifindex {ifindex}"
        for _ in range(5):
            found, interrupted = self._dump(what, ifindex)
            if not interrupted:
                return found
        raise HostError(f"cannot {what}: they kept changing while read (5 attempts)")

    def _dump(self, what: str, ifindex: int) -> tuple[dict[tuple[int, int], FlowStats], bool]:
        seq = self._send(what, encode_dump_filters(ifindex))
        found: dict[tuple[int, int], FlowStats] = {}
        interrupted = False
        while True:
            for kind, flags, got, payload in split_messages(self._recv(what)):
                if got != seq:
                    continue
                interrupted |= bool(flags & NLM_F_DUMP_INTR)
                if kind == NLMSG_DONE:
                    (error,) = struct.unpack_from("=i", payload) if len(payload) >= 4 else (0,)
                    if error < 0:
                        raise TcError(f"cannot {what}: {_words(-error, '')}", -error, "")
                    return found, interrupted
                if kind == NLMSG_ERROR:
                    _, code, detail = parse_ack(flags, payload)
                    raise TcError(f"cannot {what}: {_words(code, detail)}", code, detail)
                if kind == RTM_NEWTFILTER:
                    parsed = parse_filter(payload)
                    if parsed is not None and parsed[2] is not None:
                        found[(parsed[0], parsed[1])] = parsed[2]

    def probe(self, ifindex: int) -> str | None:
        """None if kernel flows work on ``ifindex``, else what the kernel lacks, in words.

        Adds what a kernel flow needs, one piece at a time (the qdisc, a cls_bpf filter, one
        with a mirred action; their program matches nothing) and removes it again.  A clsact
        already there is kept, and so are its filters."""
        created = True
        try:
            self._call(f"add a clsact qdisc on ifindex {ifindex}",
                       encode_qdisc(RTM_NEWQDISC, ifindex))
        except TcError as err:
            if err.code != errno.EEXIST:
                return _lacks(err, "clsact qdisc (CONFIG_NET_SCH_INGRESS)")
            created = False
        try:
            for to, feature in ((None, "cls_bpf classifier (CONFIG_NET_CLS_BPF)"),
                                (ifindex, "act_mirred action (CONFIG_NET_ACT_MIRRED)")):
                try:
                    self._call(f"add a test filter on ifindex {ifindex}", encode_add_filter(
                        ifindex, PROBE_HANDLE, PROBE_PRIO, NEVER, to))
                except TcError as err:
                    return _lacks(err, feature)
                self.delete_filter(ifindex, PROBE_HANDLE, PROBE_PRIO)
            return None
        finally:
            if created:
                self.remove_ingress(ifindex)


def _lacks(err: TcError, feature: str) -> str:
    if err.code in (errno.ENOENT, errno.EOPNOTSUPP):
        detail = f" ({err.detail})" if err.detail else ""
        return f"the kernel has no {feature}{detail}"
    return str(err)
