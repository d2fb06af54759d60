"""The kernel-flow requests as bytes, the dump parsed back, and the exchange over a fake socket
(what the kernel answers is crafted here; tests/integration has the real kernel)."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from vnet.errors import HostError
from vnet.host import cbpf, tcflow
from vnet.host.rtnl import _HEADER, _attr
from vnet.host.tcflow import (
    CLSACT_INGRESS,
    INSN,
    MIRRED,
    TCMSG,
    FlowStats,
    Tc,
    TcError,
)

EVERYTHING = cbpf.encode(cbpf.ACCEPT_ALL)
TWO = INSN.pack(0x28, 0, 0, 12) + EVERYTHING   # ldh [12]; ret -1


def tree(data: bytes) -> list[tuple[int, bytes]]:
    """The attributes of ``data`` in order, as (type, payload), checking their framing."""
    found, offset = [], 0
    while offset < len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        assert length >= 4 and offset + length <= len(data)
        found.append((kind, data[offset + 4:offset + length]))
        offset += (length + 3) & ~3
    assert offset == len(data)
    return found


def only(data: bytes) -> dict[int, bytes]:
    attrs = tree(data)
    assert len({k for k, _ in attrs}) == len(attrs)
    return dict(attrs)


def test_a_redirect_is_a_classic_cls_bpf_filter_on_the_clsact_ingress_with_one_mirred() -> None:
    kind, flags, body = tcflow.encode_add_filter(5, 0x2A, 3, TWO, 7)
    assert kind == 44   # RTM_NEWTFILTER
    assert flags == 0x1 | 0x4 | 0x400 | 0x200   # REQUEST, ACK, CREATE, EXCL
    family, ifindex, handle, parent, info = TCMSG.unpack_from(body)
    assert (family, ifindex, handle, parent) == (socket.AF_UNSPEC, 5, 0x2A, 0xFFFFFFF2)
    assert info >> 16 == 3 and struct.pack("=H", info & 0xFFFF) == b"\x00\x03"  # ETH_P_ALL
    top = only(body[TCMSG.size:])
    assert list(top) == [1, 2] and top[1] == b"bpf\0"
    options = only(top[2])
    assert options == {4: struct.pack("=H", 2), 5: TWO, 1: options[1]}
    actions = only(options[1])
    assert list(actions) == [1]   # order 1
    action = only(actions[1])
    assert action[1] == b"mirred\0"
    parms = only(action[2])
    assert list(parms) == [2]
    assert MIRRED.unpack(parms[2]) == (0, 0, 4, 0, 0, 1, 7)   # STOLEN, EGRESS_REDIR, to 7


def test_a_program_is_whole_instructions() -> None:
    with pytest.raises(ValueError, match="8-byte"):
        tcflow.encode_add_filter(5, 1, 1, EVERYTHING[:5], 7)
    with pytest.raises(ValueError):
        tcflow.encode_add_filter(5, 1, 1, b"", 7)


def test_the_probe_filter_has_no_action() -> None:
    _, _, body = tcflow.encode_add_filter(5, 1, 1, tcflow.NEVER, None)
    options = only(only(body[TCMSG.size:])[2])
    assert set(options) == {4, 5}


def test_the_qdisc_and_delete_requests() -> None:
    kind, flags, body = tcflow.encode_qdisc(tcflow.RTM_NEWQDISC, 9)
    assert (kind, flags) == (36, 0x1 | 0x4 | 0x400 | 0x200)
    assert TCMSG.unpack_from(body) == (0, 9, 0xFFFF0000, 0xFFFFFFF1, 0)
    assert only(body[TCMSG.size:]) == {1: b"clsact\0"}
    kind, flags, body = tcflow.encode_qdisc(tcflow.RTM_DELQDISC, 9)
    assert (kind, flags) == (37, 0x1 | 0x4)
    kind, flags, body = tcflow.encode_delete_filter(5, 0x2A, 3)
    assert (kind, flags) == (45, 0x1 | 0x4)
    assert TCMSG.unpack_from(body)[:4] == (0, 5, 0x2A, CLSACT_INGRESS)
    assert only(body[TCMSG.size:]) == {1: b"bpf\0"}
    kind, flags, body = tcflow.encode_dump_filters(5)
    assert (kind, flags, TCMSG.unpack(body)) == (46, 0x301, (0, 5, 0, CLSACT_INGRESS, 0))


# -- what the kernel answers ------------------------------------------------------------------

def filter_message(prio: int, handle: int, stats: bytes | None, seq: int = 1) -> bytes:
    """An RTM_NEWTFILTER as a dump sends it: the action's stats nested as the kernel nests
    them (NLA_F_NESTED set on some, padding after the 12 bytes of gnet_stats_basic)."""
    body = TCMSG.pack(0, 5, handle, CLSACT_INGRESS, (prio << 16) | 0x0300) + _attr(1, b"bpf\0")
    if handle:
        action = _attr(1, b"mirred\0") + _attr(2 | 0x8000, _attr(2, bytes(MIRRED.size)))
        if stats is not None:
            action += _attr(4 | 0x8000, stats)
        options = (_attr(4, b"\x01\x00") + _attr(5, EVERYTHING)
                   + _attr(1 | 0x8000, _attr(1 | 0x8000, action)))
        body += _attr(2, options)
    return _HEADER.pack(_HEADER.size + len(body), 44, 0x2, seq, 0) + body


def basic(octets: int, packets: int) -> bytes:
    return _attr(1, struct.pack("=QI", octets, packets) + b"\0" * 4)


def done(seq: int = 1, error: int = 0) -> bytes:
    return _HEADER.pack(_HEADER.size + 4, 3, 0x2, seq, 0) + struct.pack("=i", error)


def ack(seq: int, error: int, text: str = "") -> bytes:
    """An NLMSG_ERROR as a socket with CAP_ACK and EXT_ACK gets it."""
    body = struct.pack("=i", -error) + _HEADER.pack(60, 44, 0x5, seq, 0)
    flags = 0x100   # CAPPED
    if text:
        body += _attr(1, text.encode() + b"\0")
        flags |= 0x200   # ACK_TLVS
    return _HEADER.pack(_HEADER.size + len(body), 2, flags, seq, 0) + body


def test_a_filter_message_gives_its_prio_handle_and_counts() -> None:
    message = filter_message(3, 0x2A, basic(8600, 100) + _attr(7, bytes(16)))
    assert tcflow.parse_filter(message[_HEADER.size:]) == (3, 0x2A, FlowStats(100, 8600))


def test_pkt64_wins_over_the_32_bit_packet_count() -> None:
    stats = basic(1 << 40, 0xFFFFFFFF & (5 << 32 | 7)) + _attr(8, struct.pack("=Q", 5 << 32 | 7))
    message = filter_message(1, 1, stats)
    assert tcflow.parse_filter(message[_HEADER.size:]) == (1, 1, FlowStats(5 << 32 | 7, 1 << 40))


def test_a_chain_head_is_no_filter() -> None:
    assert tcflow.parse_filter(filter_message(3, 0, None)[_HEADER.size:]) is None
    assert tcflow.parse_filter(filter_message(3, 4, None)[_HEADER.size:]) == (3, 4, None)


class FakeSocket:
    def __init__(self, *answers: bytes | Exception) -> None:
        self.answers = list(answers)
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def recv(self, size: int) -> bytes:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        pass


def tc_with(*answers: bytes | Exception) -> tuple[Tc, FakeSocket]:
    tc, fake = Tc(), FakeSocket(*answers)
    tc.sock = fake  # type: ignore[assignment]
    return tc, fake


def test_filter_stats_reads_every_part_of_the_dump_until_done() -> None:
    tc, fake = tc_with(filter_message(3, 0, None) + filter_message(3, 1, basic(86, 1)),
                       filter_message(4, 0, None, seq=99)   # not ours
                       + filter_message(4, 2, basic(172, 2)), done())
    assert tc.filter_stats(5) == {(3, 1): FlowStats(1, 86), (4, 2): FlowStats(2, 172)}
    length, kind, flags, seq, _ = _HEADER.unpack_from(fake.sent[0])
    assert (length, kind, flags, seq) == (len(fake.sent[0]), 46, 0x301, 1)


def test_a_refusal_names_the_request_and_carries_the_kernels_words() -> None:
    tc, _ = tc_with(ack(1, errno.EEXIST, "Filter already exists"))
    with pytest.raises(TcError, match=r"^cannot add kernel flow redirect on ifindex 5 to 7 "
                                      r"\(prio 3, handle 0x2a\): File exists \(Filter already "
                                      r"exists\)$") as caught:
        tc.add_redirect(5, 0x2A, 3, EVERYTHING, 7)
    assert isinstance(caught.value, HostError) and caught.value.code == errno.EEXIST


def test_absent_is_fine_for_removals_and_the_answers_stay_in_step() -> None:
    tc, fake = tc_with(ack(1, errno.ENOENT), ack(2, errno.ENODEV), ack(3, errno.EINVAL),
                       ack(3, 0) + ack(4, errno.ENOENT), ack(5, 0))
    tc.delete_filter(5, 1, 1)
    tc.delete_filter(5, 1, 1)
    tc.remove_ingress(5)      # EINVAL (another qdisc than clsact there): none of ours
    tc.reset_ingress(5)       # the stale ack 3 is skipped; 4: delete, 5: add
    assert [_HEADER.unpack_from(m)[1] for m in fake.sent] == [45, 45, 37, 37, 36]


def test_a_timeout_is_a_host_error() -> None:
    tc, _ = tc_with(TimeoutError())
    with pytest.raises(HostError, match="cannot add a clsact qdisc on ifindex 5: the kernel "
                                        "did not answer"):
        tc._call("add a clsact qdisc on ifindex 5", tcflow.encode_qdisc(tcflow.RTM_NEWQDISC, 5))


def test_probe_says_what_the_kernel_lacks_and_cleans_up() -> None:
    tc, fake = tc_with(ack(1, 0), ack(2, errno.ENOENT, "TC classifier not found"), ack(3, 0))
    assert tc.probe(5) == ("the kernel has no cls_bpf classifier (CONFIG_NET_CLS_BPF) "
                           "(TC classifier not found)")
    assert [_HEADER.unpack_from(m)[1] for m in fake.sent] == [36, 44, 37]
    tc, fake = tc_with(ack(1, errno.EEXIST), ack(2, 0), ack(3, 0),
                       ack(4, errno.EOPNOTSUPP, "Failed to load TC action module"))
    assert tc.probe(5) == ("the kernel has no act_mirred action (CONFIG_NET_ACT_MIRRED) "
                           "(Failed to load TC action module)")
    assert [_HEADER.unpack_from(m)[1] for m in fake.sent] == [36, 44, 45, 44]  # clsact kept
    tc, _ = tc_with(ack(1, errno.ENOENT, "Specified qdisc kind is unknown"))
    assert tc.probe(5) == ("the kernel has no clsact qdisc (CONFIG_NET_SCH_INGRESS) "
                           "(Specified qdisc kind is unknown)")
    tc, _ = tc_with(*(ack(n, 0) for n in range(1, 7)))
    assert tc.probe(5) is None
