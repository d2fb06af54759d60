"""The classic BPF programs of vnet.host.cbpf, run by a small interpreter of the opcodes they
use, with the kernel's rules (checked jumps, a final ret, 0 on a load past the frame)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vnet.errors import HostError
from vnet.host import cbpf
from vnet.host.cbpf import Insn

SKF_AD_OFF = -0x1000
SKF_LL_OFF = -0x200000
SKF_NET_OFF = -0x100000
ETH_HLEN = 14


class LoadOutOfFrame(Exception):
    pass


def check(program: Sequence[Insn]) -> None:
    """What the kernel's bpf_check_classic asks of these opcodes."""
    assert 0 < len(program) <= cbpf.BPF_MAXINSNS
    for pc, insn in enumerate(program):
        assert insn.code in (cbpf.LD_W_ABS, cbpf.LD_H_ABS, cbpf.JEQ_K, cbpf.JA, cbpf.RET_K)
        if insn.code == cbpf.JEQ_K:
            assert pc + 1 + max(insn.jt, insn.jf) < len(program), pc
        if insn.code == cbpf.JA:
            assert pc + 1 + insn.k < len(program), pc
    assert program[-1].code == cbpf.RET_K


def load(frame: bytes, data: int, vlan_present: bool, k: int, size: int) -> int:
    """A ``ld``/``ldh`` at ``k``: ``data`` is where skb->data is in ``frame`` (0 in a packet
    socket, the network header at tc ingress)."""
    signed = k - (1 << 32) if k & 0x80000000 else k
    if signed >= SKF_AD_OFF:
        if signed < 0:
            assert signed == SKF_AD_OFF + cbpf.SKF_AD_VLAN_TAG_PRESENT and size == 4
            return int(vlan_present)
        start = data + signed
    else:
        assert SKF_LL_OFF <= signed < SKF_NET_OFF, hex(k)
        start = signed - SKF_LL_OFF
    if start + size > len(frame):
        raise LoadOutOfFrame
    return int.from_bytes(frame[start:start + size], "big")


def run(program: Sequence[Insn], frame: bytes, vlan_present: bool = False,
        data: int = 0) -> int:
    check(program)
    a, pc = 0, 0
    while True:
        insn = program[pc]
        pc += 1
        if insn.code in (cbpf.LD_W_ABS, cbpf.LD_H_ABS):
            try:
                a = load(frame, data, vlan_present, insn.k, 4 if insn.code == cbpf.LD_W_ABS else 2)
            except LoadOutOfFrame:
                return 0
        elif insn.code == cbpf.JEQ_K:
            pc += insn.jt if a == insn.k else insn.jf
        elif insn.code == cbpf.JA:
            pc += insn.k
        else:
            return insn.k


def frame(src: bytes, dst: bytes, payload: bytes = b"\x08\x00" + bytes(46)) -> bytes:
    return dst + src + payload


A, B, C = (bytes.fromhex(h) for h in ("020000000001", "020000000002", "020000000003"))
macs = st.binary(min_size=6, max_size=6)
# a few MACs, so that drawn frames often share a source or a destination with a pair
near_macs = st.one_of(st.sampled_from([A, B, C, A[:5] + B[5:], B[:4] + A[4:]]), macs)
pairs_st = st.lists(st.tuples(near_macs, near_macs), max_size=cbpf.MAX_PAIRS)
tails = st.binary(min_size=2, max_size=60)  # EtherType and more: a frame of 14 bytes or more


def test_encode_is_struct_sock_filter() -> None:
    program = (Insn(cbpf.LD_H_ABS, 0, 0, 12), Insn(cbpf.JEQ_K, 1, 2, 0x800),
               Insn(cbpf.RET_K, 0, 0, 0xFFFFFFFF))
    code = cbpf.encode(program)
    assert len(code) == 24
    assert struct.unpack("=HBBI", code[8:16]) == (0x15, 1, 2, 0x800)
    assert code[16:] == struct.pack("=HBBI", 6, 0, 0, 0xFFFFFFFF)


def test_an_instruction_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError):
        Insn(cbpf.JEQ_K, 256, 0, 0)
    with pytest.raises(ValueError):
        Insn(cbpf.RET_K, 0, 0, 1 << 32)


def test_the_classifier_matches_its_untagged_pair_only() -> None:
    program = cbpf.flow_classifier(A, B)
    assert run(program, frame(A, B)) == 0xFFFFFFFF
    assert run(program, frame(A, B), vlan_present=True) == 0
    assert run(program, frame(B, A)) == 0
    assert run(program, frame(A, C)) == 0
    assert run(program, frame(C, B)) == 0
    assert run(program, frame(A, B)[:11]) == 0  # the kernel's end for a short frame


def test_the_programs_read_the_same_at_tc_ingress_and_in_a_packet_socket() -> None:
    """skb->data at the network header or the link-layer header: the same answer."""
    rejecting = cbpf.reject_flows([(A, B)])
    for f in (frame(A, B), frame(B, A), frame(A, C)):
        assert run(cbpf.flow_classifier(A, B), f, data=ETH_HLEN) == run(
            cbpf.flow_classifier(A, B), f)
        assert run(rejecting, f, data=ETH_HLEN) == run(rejecting, f)


def test_no_pairs_accept_everything() -> None:
    assert cbpf.reject_flows([]) == cbpf.ACCEPT_ALL
    assert run(cbpf.ACCEPT_ALL, b"") == 0xFFFFFFFF


def test_rejecting_drops_untagged_frames_of_the_pairs_alone() -> None:
    program = cbpf.reject_flows([(A, B), (B, C)])
    assert len(program) == 4 + 9 * 2
    assert run(program, frame(A, B)) == 0
    assert run(program, frame(B, C)) == 0
    assert run(program, frame(A, B), vlan_present=True) == 0xFFFFFFFF
    for src, dst in ((B, A), (A, C), (C, B), (C, A)):
        assert run(program, frame(src, dst)) == 0xFFFFFFFF
    assert run(program, frame(A, B)[:8], vlan_present=True) == 0xFFFFFFFF


def test_the_largest_filter_jumps_in_range_and_one_more_pair_is_refused() -> None:
    pairs = [(bytes([2, 0, 0, 0, 0, n]), bytes([2, 0, 0, 0, 1, n]))
             for n in range(cbpf.MAX_PAIRS + 1)]
    program = cbpf.reject_flows(pairs[:-1])
    check(program)
    assert len(program) == 4 + 9 * cbpf.MAX_PAIRS
    assert max(max(i.jt, i.jf) for i in program) <= 7
    assert run(program, frame(*pairs[-2])) == 0
    assert run(program, frame(*pairs[-1])) == 0xFFFFFFFF
    with pytest.raises(ValueError, match="more than one socket filter holds"):
        cbpf.reject_flows(pairs)


def test_a_mac_of_another_length_is_refused() -> None:
    with pytest.raises(ValueError, match="6 bytes"):
        cbpf.flow_classifier(A[:5], B)
    with pytest.raises(ValueError, match="6 bytes"):
        cbpf.reject_flows([(A, B + b"\x00")])


@given(pairs_st, near_macs, near_macs, tails, st.booleans())
def test_rejecting_drops_exactly_the_untagged_frames_of_listed_pairs(
        pairs: list[tuple[bytes, bytes]], src: bytes, dst: bytes, tail: bytes,
        tagged: bool) -> None:
    program = cbpf.reject_flows(pairs)
    dropped = not tagged and (src, dst) in pairs
    assert run(program, frame(src, dst, tail), tagged) == (0 if dropped else 0xFFFFFFFF)


@given(pairs_st.filter(bool), st.data())
def test_every_listed_pair_is_dropped(pairs: list[tuple[bytes, bytes]],
                                      data: st.DataObject) -> None:
    src, dst = data.draw(st.sampled_from(pairs))
    assert run(cbpf.reject_flows(pairs), frame(src, dst, data.draw(tails))) == 0


@given(near_macs, near_macs, near_macs, near_macs, tails, st.booleans(),
       st.sampled_from([0, ETH_HLEN]))
def test_the_classifier_matches_exactly_its_pair(
        src: bytes, dst: bytes, fsrc: bytes, fdst: bytes, tail: bytes, tagged: bool,
        data: int) -> None:
    matched = not tagged and (fsrc, fdst) == (src, dst)
    result = run(cbpf.flow_classifier(src, dst), frame(fsrc, fdst, tail), tagged, data)
    assert result == (0xFFFFFFFF if matched else 0)


def test_attach_refuses_an_empty_or_oversized_program() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        with pytest.raises(ValueError):
            cbpf.attach_filter(a, ())
        with pytest.raises(ValueError):
            cbpf.attach_filter(a, cbpf.ACCEPT_ALL * (cbpf.BPF_MAXINSNS + 1))


def test_attach_and_detach_on_a_datagram_socket() -> None:
    """Socket filters apply to AF_UNIX datagrams too (no root needed): drop all, keep all."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        b.setblocking(False)
        cbpf.detach_filter(b)  # none attached: no error
        cbpf.attach_filter(b, (Insn(cbpf.RET_K, 0, 0, 0),))
        a.send(b"dropped")
        cbpf.attach_filter(b, cbpf.ACCEPT_ALL)  # replaces it
        a.send(b"kept")
        assert b.recv(100) == b"kept"
        cbpf.detach_filter(b)
        a.send(b"unfiltered")
        assert b.recv(100) == b"unfiltered"
        with pytest.raises(BlockingIOError):
            b.recv(100)


def test_the_kernel_refusing_a_program_is_a_host_error() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b, pytest.raises(HostError, match="refused a socket filter of 1 instructions"):
        cbpf.attach_filter(b, (Insn(cbpf.JA, 0, 0, 5),))  # jumps out, no ret


def test_a_filter_holds_as_many_flows_as_can_be_replaced_in_place_under_optmem_max(
        tmp_path: Path) -> None:
    assert cbpf.pairs_that_fit(131072) == cbpf.MAX_PAIRS        # today's default
    assert cbpf.pairs_that_fit(20480) == 32                      # older kernels' (measured)
    assert cbpf.pairs_that_fit(2 * 48 * cbpf.BYTES_PER_PAIR) < 48
    assert cbpf.pairs_that_fit(0) == 0
    sysctl = tmp_path / "optmem_max"
    sysctl.write_text("131072\n")
    assert cbpf.optmem_max(str(sysctl)) == 131072
    assert cbpf.optmem_max(str(tmp_path / "absent")) == cbpf.OLD_OPTMEM_MAX
