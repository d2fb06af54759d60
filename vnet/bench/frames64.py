"""64-byte frames at a fixed, smooth, pinned offered rate: delivered, and RFC 2544's zero-loss
rate.

Why not trafgen: flat out it shares the two cores with the switch, so it offered each system
a different rate (280 k/s to the bridge, 438 k/s to vnet); and its ``--rate`` keeps the
average, not the pace (up to 1 400 frames within 1 ms at 20 k/s, docs/benchmarks.md), so a
zero-loss search measured the switch's burst absorption.  Here the generator is a process of
its own (``python -m vnet.bench.frames64``, run in node A's namespace), pinned to one CPU
(``sched_setaffinity``), sending one 60-byte frame over and over on a packet socket, paced on
the monotonic clock by ``vnet.bench.pacer`` (never ahead of a frame's due time by more than
one chunk; behind, it catches up chunk by chunk at the speed it can send, never in one
burst).  It reports the frames it sent, the seconds it took and the CPU it used.

Smoothness is not assumed: ``verify`` captures the generator's frames with kernel receive
timestamps (``SO_TIMESTAMPNS`` on a packet socket at the switch's port) and ``smoothness``
counts the most frames in any 1 ms window against the target (rate x 1 ms).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import itertools
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vnet.bench import pacer, search
from vnet.bench.testbed import ADDR_A, MAC_A, MAC_B, SINK_ADDR, BenchError, Testbed
from vnet.host import netns
from vnet.host.afpacket import ETH_P_ALL, socket_counts
from vnet.packet.ethernet import mac_to_bytes
from vnet.packet.inet import internet_checksum

CHUNK_SECONDS = 0.0002      # at most this many seconds' worth of frames back to back
PR_SET_TIMERSLACK = 29
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
PACKET_OUTGOING = 4


# ---- the frame ------------------------------------------------------------------------------


def udp64(src_mac: str = MAC_A, dst_mac: str = MAC_B, src_ip: str = ADDR_A,
          dst_ip: str = SINK_ADDR) -> bytes:
    """A 60-byte frame (64 on the wire with the FCS): Ethernet, IPv4, UDP 9 -> 9, 18 zero
    bytes of data."""
    udp = struct.pack("!HHHH", 9, 9, 8 + 18, 0) + bytes(18)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                               socket.inet_aton(src_ip), socket.inet_aton(dst_ip)))
    ip[10:12] = internet_checksum(bytes(ip)).to_bytes(2, "big")
    return mac_to_bytes(dst_mac) + mac_to_bytes(src_mac) + b"\x08\x00" + bytes(ip) + udp


# ---- smoothness (pure) --------------------------------------------------------------------


@dataclass(frozen=True)
class Smoothness:
    frames: int
    rate: float             # frames/s over the capture (first to last timestamp)
    target_per_ms: float    # the asked rate x 1 ms
    max_per_ms: int         # the most frames within any 1 ms window (sliding)
    longest_gap_us: float   # the longest silence between two frames

    @property
    def peak_ratio(self) -> float:
        """``max_per_ms / target_per_ms``: 1.0 is perfectly even, trafgen ``--rate`` 70."""
        return self.max_per_ms / self.target_per_ms if self.target_per_ms else float("nan")


def smoothness(stamps_ns: Sequence[int], rate: float, window_ns: int = 1_000_000
               ) -> Smoothness:
    """The pace of frames that arrived at ``stamps_ns`` (any order), offered at ``rate``."""
    ts = sorted(stamps_ns)
    most, first = 0, 0
    for last, t in enumerate(ts):  # the window (t - window_ns, t]
        while ts[first] <= t - window_ns:
            first += 1
        most = max(most, last - first + 1)
    span = (ts[-1] - ts[0]) / 1e9 if len(ts) > 1 else 0.0
    gap = max((b - a for a, b in itertools.pairwise(ts)), default=0) / 1e3
    return Smoothness(len(ts), (len(ts) - 1) / span if span else 0.0,
                      rate * window_ns / 1e9, most, gap)


# ---- the generator (a process of its own) --------------------------------------------------


@dataclass(frozen=True)
class Sent:
    frames: int         # handed to the socket (asked for minus refused)
    refused: int
    seconds: float      # the sending window, measured by the generator
    cpu_seconds: float  # user + system CPU of the generator over that window
    cpu: int            # the CPU it was pinned to

    @property
    def rate(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    @property
    def cpu_share(self) -> float:
        return self.cpu_seconds / self.seconds if self.seconds else 0.0


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(_Iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


class BatchSender:
    """Frames from a list, in turn (and round again), ``k`` per system call (``sendmmsg(2)``
    through ctypes: the standard library has no binding), so the generator's CPU goes to the
    kernel's work, not to the interpreter; ``send`` one by one without it."""

    def __init__(self, sock: socket.socket, frames: Sequence[bytes]) -> None:
        if not frames:
            raise ValueError("a batch sender needs at least one frame")
        self.sock, self.frames, self.next = sock, frames, 0
        blob = b"".join(frames)
        self.buf = ctypes.create_string_buffer(blob, len(blob))
        base = ctypes.addressof(self.buf)
        self.iovs = (_Iovec * len(frames))()
        self.msgs = (_Mmsghdr * len(frames))()
        offset = 0
        for i, frame in enumerate(frames):
            self.iovs[i].base, self.iovs[i].len = base + offset, len(frame)
            self.msgs[i].hdr.iov = ctypes.pointer(self.iovs[i])
            self.msgs[i].hdr.iovlen = 1
            offset += len(frame)
        libc = ctypes.CDLL(None, use_errno=True)
        self.sendmmsg = getattr(libc, "sendmmsg", None)
        self.fd = sock.fileno()

    def _one_by_one(self, start: int, k: int) -> int:
        sent = 0
        for i in range(start, start + k):
            with contextlib.suppress(OSError):
                sent += self.sock.send(self.frames[i]) > 0
        return sent

    def __call__(self, k: int) -> int:
        done = 0
        while done < k:  # sendmmsg stops at the first frame the socket refuses
            start = self.next
            want = min(k - done, len(self.frames) - start)
            if self.sendmmsg is None:
                n = self._one_by_one(start, want)
            else:
                n = self.sendmmsg(self.fd, ctypes.byref(self.msgs,
                                                         start * ctypes.sizeof(_Mmsghdr)),
                                  want, 0)
            self.next = (start + want) % len(self.frames)
            if n < want:  # refused (ENOBUFS): the rest of the chunk is not offered
                return done + max(n, 0)
            done += n
        return done


def generator_cpu() -> int:
    """The CPU the generator is pinned to: the last one (the same for every system)."""
    return max(os.sched_getaffinity(0))


def _generate(ifname: str, rate: float, n: int, cpu: int, frames: Sequence[bytes]) -> Sent:
    os.sched_setaffinity(0, {cpu})
    # the machine's other work should not take the generator's pace (at nice 0 a 200 k/s
    # trial offered 127-191 k/s on a busy machine; at -20 once 199-200, once 132-160 k/s)
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, -20)
    # the default 50 µs timer slack would stretch every short sleep of the pacer
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.bind((ifname, 0))
        size = pacer.chunk_size(rate, CHUNK_SECONDS)
        batch = BatchSender(sock, frames if len(frames) > 1 else list(frames) * size)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        took, refused = pacer.send_repeated(batch, n, rate, CHUNK_SECONDS)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        sock.close()
    cpu_s = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return Sent(n - refused, refused, took, cpu_s, cpu)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vnet.bench.frames64",
                                description="send one frame at a smooth, pinned rate "
                                "(the bench's 64-byte generator); prints a JSON line")
    p.add_argument("--ifname", required=True)
    p.add_argument("--rate", type=float, required=True, help="frames/s")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--cpu", type=int, required=True, help="the CPU to pin the sender to")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--frame", help="the frame, in hex, sent over and over")
    what.add_argument("--sweep", type=int, help="one frame from each of N new source MACs "
                      "(vnet.bench.measure.sweep_frames), once")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0:
        p.error("--rate and --seconds must be positive")
    if args.sweep is not None and args.sweep < 1:
        p.error("--sweep needs N >= 1")
    try:
        if args.sweep is not None:
            from vnet.bench.measure import sweep_frames  # measure imports this module
            frames, n = sweep_frames(args.sweep), args.sweep
        else:
            frames, n = [bytes.fromhex(args.frame)], max(int(args.rate * args.seconds), 1)
        sent = _generate(args.ifname, args.rate, n, args.cpu, frames)
    except (OSError, ValueError) as err:
        print(f"frames64: {err}", file=sys.stderr)
        return 1
    print(json.dumps(sent.__dict__), flush=True)
    return 0


def generate(bed: Testbed, rate: float, seconds: float, cpu: int,
             frame: bytes | None = None, sweep: int | None = None) -> Sent:
    """Run the generator in node A (its eth0) and wait for its report: ``frame`` (default
    ``udp64()``) for ``seconds``, or a MAC sweep of ``sweep`` frames."""
    what = (["--sweep", str(sweep)] if sweep is not None
            else ["--frame", (frame or udp64()).hex()])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = bed.spawn([sys.executable, "-m", "vnet.bench.frames64", "--ifname", "eth0",
                      "--rate", f"{rate:.0f}", "--seconds", f"{seconds:g}", "--cpu", str(cpu),
                      *what], netns=bed.node_a,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        out, err = proc.communicate(timeout=seconds * 3 + 30)
    finally:
        bed.stop(proc)
    if proc.returncode != 0:
        raise BenchError(f"the 64-byte generator failed ({proc.returncode}): {err.strip()}")
    return Sent(**json.loads(out.splitlines()[-1]))


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


@contextlib.contextmanager
def switch_off_cpu(bed: Testbed, cpu: int) -> Iterator[None]:
    """Keep the switch's processes (every process in the bench-host namespace: vnet's
    datapath, OVS's daemons; none for the kernel bridge) off the generator's CPU while the
    64-byte trials run, so that the two do not share a core and the generator offers every
    system the same rate; their affinity is put back afterwards."""
    others = set(range(os.cpu_count() or 1)) - {cpu}
    pids = [int(p) for p in subprocess.run(["ip", "netns", "pids", bed.host], check=False,
                                           capture_output=True, text=True).stdout.split()]
    saved: dict[int, set[int]] = {}
    try:
        if others:
            for tid in (t for p in pids for t in _threads(p)):
                with contextlib.suppress(OSError):
                    saved[tid] = os.sched_getaffinity(tid)
                    os.sched_setaffinity(tid, others & saved[tid] or others)
        yield
    finally:
        for tid, mask in saved.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, mask)


# ---- receive timestamps -------------------------------------------------------------------


class Capture:
    """Kernel receive timestamps of every frame arriving on a netdev, read afterwards: the
    socket's receive buffer holds a whole trial (``SO_RCVBUFFORCE``)."""

    def __init__(self, netns_name: str, ifname: str, frames: int) -> None:
        with netns.entered(netns_name):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                      socket.htons(ETH_P_ALL))
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE,
                                 min(frames * 2048 + (1 << 20), 1 << 30))
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.sock.bind((ifname, ETH_P_ALL))
        except OSError:
            self.sock.close()
            raise

    def drain(self) -> tuple[list[int], int]:
        """``(timestamps in ns of the frames received, frames the socket dropped)``."""
        self.sock.setblocking(False)
        stamps: list[int] = []
        space = socket.CMSG_SPACE(16)
        while True:
            try:
                _data, anc, _flags, addr = self.sock.recvmsg(64, space)
            except BlockingIOError:
                break
            if addr[2] == PACKET_OUTGOING:
                continue
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", value[:16])
                    stamps.append(sec * 1_000_000_000 + nsec)
        _packets, drops = socket_counts(self.sock)
        return stamps, drops

    def close(self) -> None:
        self.sock.close()


# ---- the measurements -------------------------------------------------------------------


@dataclass(frozen=True)
class Offer:
    sent: Sent
    tx: int         # what left node A's NIC
    delivered: int  # what node B's NIC received
    lost: int

    @property
    def offered_fps(self) -> float:
        return self.tx / self.sent.seconds if self.sent.seconds else 0.0

    @property
    def delivered_fps(self) -> float:
        return self.delivered / self.sent.seconds if self.sent.seconds else 0.0


def _settled(read: Any, deadline: float = 5.0) -> int:
    """A counter once it stops growing (the switch may still hold frames in its queues)."""
    last, end = read(), time.monotonic() + deadline
    while time.monotonic() < end:
        time.sleep(0.05)
        now = read()
        if now == last:
            return int(now)
        last = now
    return int(last)


def offer(bed: Testbed, rate: float, seconds: float, cpu: int) -> Offer:
    """One trial: ``rate`` frames/s for ``seconds`` from A to B; what arrived."""
    from vnet.bench.measure import counters  # measure imports this module
    with counters(bed) as (a, b):
        tx0, rx0 = a.read("eth0")[1], b.read("eth0")[0]
        sent = generate(bed, rate, seconds, cpu)
        tx1 = _settled(lambda: a.read("eth0")[1])
        rx1 = _settled(lambda: b.read("eth0")[0])
    tx, rx = tx1 - tx0, rx1 - rx0
    return Offer(sent, tx, rx, max(tx - rx, 0))


def verify(bed: Testbed, rate: float, seconds: float, cpu: int) -> tuple[Smoothness, int]:
    """The generator's pace as the switch's port receives it: ``(smoothness, frames the
    capture missed)``."""
    cap = Capture(bed.host, bed.port_a, int(rate * seconds))
    try:
        generate(bed, rate, seconds, cpu)
        stamps, drops = cap.drain()
    finally:
        cap.close()
    if len(stamps) < 2:
        raise BenchError("the timestamp capture on the switch's port saw no frames")
    return smoothness(stamps, rate), drops


UP = 2.0  # the zero-loss search goes no higher than this many times the fixed rate


def zero_loss(bed: Testbed, start: float, seconds: float, steps: int, cpu: int
              ) -> tuple[search.Answer, list[search.Trial]]:
    """RFC 2544's throughput: the highest offered rate at which a trial of ``seconds`` loses
    no frame, searched from ``start`` (the fixed offered rate) by factors of 1.5, down to
    start/32 while trials lose frames, up to UP x start (or the generator's limit) while they
    do not, then bisected."""
    plan = search.Plan(start=start, ceiling=start * UP, floor=start / 32, steps=steps,
                       factor=1.5)
    trials: list[search.Trial] = []
    while (rate := search.next_rate(plan, trials)) is not None:
        o = offer(bed, rate, seconds, cpu)
        trials.append(search.Trial(rate, o.offered_fps, o.tx > 0 and o.lost == 0))
    return search.conclude(plan, trials), trials


if __name__ == "__main__":
    raise SystemExit(main())
