"""Classic BPF programs (``struct sock_filter``) for kernel flows, and attaching them.

A kernel flow is an untagged unicast flow (source MAC, destination MAC) that tc cls_bpf
(classic mode, not direct-action) on a netdev's ingress matches with ``flow_classifier`` and
act_mirred redirects.  The datapath's packet socket on that netdev sees every frame *before*
tc ingress redirects it, so it carries a socket filter, ``reject_flows``, that drops exactly
those flows' frames and hands over everything else.

Why the programs load what they load:

* The kernel moves an 802.1Q (and 802.1ad) tag into skb metadata before tc ingress and
  before packet sockets, so "untagged" is the ancillary load ``SKF_AD_VLAN_TAG_PRESENT``
  (1 if a tag was moved out, else 0), not a look at the EtherType.
* MAC bytes are loaded relative to the link-layer header (``SKF_LL_OFF``), which means the
  same wherever ``skb->data`` is.  A packet socket runs its filter with ``skb->data`` at the
  link-layer header; at tc ingress it is at the network header, though cls_bpf pushes the
  link-layer header back before running a program (Linux 6.18: plain offsets from 0 were
  seen to match there too), so this is robustness, not a need.
* A load past the frame's end ends a classic program with 0: frames shorter than 12 bytes
  are dropped by ``reject_flows`` (no netdev delivers such frames: 14 is Ethernet's header).
* Jump offsets are 8 bits: every program here is a chain of blocks in which a failed
  comparison jumps at most 7 instructions, to the next block; nothing jumps far.

Socket filters are charged to ``net.core.optmem_max`` (per network namespace and 131072 by
default on recent kernels, such as this machine's 6.18; 20480 on older ones), about 34 bytes
per classic instruction once the kernel has translated the program; a program over the limit
fails with ENOMEM.  Replacing a filter charges the new one before the old one is let go, so
it needs room for both.  See ``MAX_PAIRS`` for what was measured.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from vnet.errors import HostError

# Instruction classes, sizes, modes, operations (linux/filter.h, linux/bpf_common.h).
BPF_LD, BPF_JMP, BPF_RET = 0x00, 0x05, 0x06
BPF_W, BPF_H = 0x00, 0x08
BPF_ABS = 0x20
BPF_JA, BPF_JEQ = 0x00, 0x10
BPF_K = 0x00

LD_W_ABS = BPF_LD | BPF_W | BPF_ABS   # 0x20: A = 32 bits at k (network order)
LD_H_ABS = BPF_LD | BPF_H | BPF_ABS   # 0x28: A = 16 bits at k
JEQ_K = BPF_JMP | BPF_JEQ | BPF_K     # 0x15: pc += (A == k) ? jt : jf
JA = BPF_JMP | BPF_JA                 # 0x05: pc += k
RET_K = BPF_RET | BPF_K               # 0x06: return k

SKF_AD_OFF = -0x1000 & 0xFFFFFFFF      # ancillary data, as u32
SKF_AD_VLAN_TAG_PRESENT = 48
SKF_LL_OFF = -0x200000 & 0xFFFFFFFF    # offsets from the link-layer header, as u32
BPF_MAXINSNS = 4096

ACCEPT = 0xFFFFFFFF  # a socket filter: keep the whole frame; cls_bpf: match (default class)
REJECT = 0

SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27

MAX_PAIRS = 48
"""The most flows one ``reject_flows`` program holds: 436 instructions.

Measured with real attaches to packet sockets (Linux 6.18, x86-64): 48 pairs need an
optmem_max of 14848 bytes.  At the default 131072 one filter holds up to 418 pairs, and a
filter of up to 208 pairs can be replaced by another as large.  At 20480 (older kernels'
default) a filter holds 64 pairs but a 48-pair filter cannot replace another of 48 (32 can):
there, detach first or raise optmem_max."""


BYTES_PER_PAIR = 310   # of optmem_max, a pair of ``reject_flows`` (48 pairs: 14848 bytes)
OPTMEM_MAX = "/proc/sys/net/core/optmem_max"
OLD_OPTMEM_MAX = 20480  # what to assume where the sysctl cannot be read


def pairs_that_fit(optmem_max: int) -> int:
    """How many flows one ``reject_flows`` filter may hold under ``optmem_max`` so that it
    can still be replaced in place (the old and the new one charged at once): ``MAX_PAIRS``
    at today's default, 32 at the older 20480."""
    return max(0, min(MAX_PAIRS, optmem_max // 2 // BYTES_PER_PAIR - 1))


def optmem_max(path: str = OPTMEM_MAX) -> int:
    """This namespace's ``net.core.optmem_max`` (``OLD_OPTMEM_MAX`` if it cannot be read)."""
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return OLD_OPTMEM_MAX


@dataclass(frozen=True)
class Insn:
    """One ``struct sock_filter``: opcode, jump offsets if true and if false, constant."""

    code: int
    jt: int
    jf: int
    k: int

    def __post_init__(self) -> None:
        if not (0 <= self.code <= 0xFFFF and 0 <= self.jt <= 0xFF and 0 <= self.jf <= 0xFF
                and 0 <= self.k <= 0xFFFFFFFF):
            raise ValueError(f"instruction out of range: {self}")


SOCK_FILTER = struct.Struct("=HBBI")


def encode(program: Sequence[Insn]) -> bytes:
    """The program as the kernel reads it: an array of ``struct sock_filter``."""
    return b"".join(SOCK_FILTER.pack(i.code, i.jt, i.jf, i.k) for i in program)


ACCEPT_ALL: tuple[Insn, ...] = (Insn(RET_K, 0, 0, ACCEPT),)


def _mac_words(mac: bytes) -> tuple[int, int]:
    if len(mac) != 6:
        raise ValueError(f"a MAC address is 6 bytes, not {len(mac)}: {mac.hex()}")
    return int.from_bytes(mac[:4], "big"), int.from_bytes(mac[4:], "big")


def _if_untagged(jt: int, jf: int) -> tuple[Insn, ...]:
    """Jump ``jt`` past these two if the frame is untagged, else ``jf``."""
    return (Insn(LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT),
            Insn(JEQ_K, jt, jf, 0))


def _pair_or_skip(src: bytes, dst: bytes, skip: int) -> tuple[Insn, ...]:
    """8 instructions: fall through if the frame goes from ``src`` to ``dst``, else jump
    ``skip`` instructions past the block."""
    dst_hi, dst_lo = _mac_words(dst)
    src_hi, src_lo = _mac_words(src)
    loads = ((LD_W_ABS, 0, dst_hi), (LD_H_ABS, 4, dst_lo),
             (LD_W_ABS, 6, src_hi), (LD_H_ABS, 10, src_lo))
    block: list[Insn] = []
    for n, (code, offset, value) in enumerate(loads):
        left = 2 * (len(loads) - n - 1)   # instructions after this comparison in the block
        block += [Insn(code, 0, 0, SKF_LL_OFF + offset), Insn(JEQ_K, 0, left + skip, value)]
    return tuple(block)


def flow_classifier(src: bytes, dst: bytes) -> tuple[Insn, ...]:
    """For tc cls_bpf (classic): ``ACCEPT`` (match) for an untagged frame from ``src`` to
    ``dst``, else 0; 12 instructions.  Works as a socket filter too."""
    return (_if_untagged(0, 9) + _pair_or_skip(src, dst, 1)
            + (Insn(RET_K, 0, 0, ACCEPT), Insn(RET_K, 0, 0, REJECT)))


def reject_flows(pairs: Sequence[tuple[bytes, bytes]]) -> tuple[Insn, ...]:
    """A socket filter that drops the untagged frames of every ``(src, dst)`` in ``pairs``
    and keeps every other frame whole; 9 instructions a pair and 4 more.

    Each pair is a block whose failed comparisons fall to the next block and whose success
    falls to its ``ret 0``; the last block falls to ``ret ACCEPT``.  No pairs: ``ACCEPT_ALL``
    (or ``detach_filter``)."""
    if len(pairs) > MAX_PAIRS:
        raise ValueError(f"{len(pairs)} flows are more than one socket filter holds "
                         f"({MAX_PAIRS})")
    return _reject(pairs)


def _reject(pairs: Sequence[tuple[bytes, bytes]]) -> tuple[Insn, ...]:
    """``reject_flows`` without the ``MAX_PAIRS`` bound (to measure the kernel's)."""
    if not pairs:
        return ACCEPT_ALL
    program = [*_if_untagged(1, 0), Insn(RET_K, 0, 0, ACCEPT)]
    for src, dst in pairs:
        program += [*_pair_or_skip(src, dst, 1), Insn(RET_K, 0, 0, REJECT)]
    program.append(Insn(RET_K, 0, 0, ACCEPT))
    return tuple(program)


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def attach_filter(sock: socket.socket, program: Sequence[Insn]) -> None:
    """Attach ``program`` as ``sock``'s filter (SO_ATTACH_FILTER), replacing any other."""
    if not 0 < len(program) <= BPF_MAXINSNS:
        raise ValueError(f"a classic BPF program has 1 to {BPF_MAXINSNS} instructions, "
                         f"not {len(program)}")
    code = encode(program)
    buffer = ctypes.create_string_buffer(code, len(code))  # alive until setsockopt returns
    fprog = _SockFprog(len(program), ctypes.addressof(buffer))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))
    except OSError as err:
        reason = err.strerror or str(err)
        if err.errno == errno.ENOMEM:
            raise HostError(f"the kernel refused a socket filter of {len(program)} "
                            f"instructions: {reason}; net.core.optmem_max may be too small"
                            ) from None
        raise HostError(f"the kernel refused a socket filter of {len(program)} "
                        f"instructions: {reason}") from None
    finally:
        del buffer


def detach_filter(sock: socket.socket) -> None:
    """Remove ``sock``'s filter (SO_DETACH_FILTER); nothing attached is no error."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
    except OSError as err:
        if err.errno != errno.ENOENT:
            raise HostError(f"cannot remove a socket filter: {err.strerror or err}") from None
