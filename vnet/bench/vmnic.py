"""The VM NIC path: frames/s and round trip through virtio-net, against a kernel-only path.

``python -m vnet.bench.vmnic [--repeat N] [--seconds S]`` (root, /dev/kvm).  One private
namespace holds a TAP (``vmtap0``, 10.253.0.1/24, a permanent neighbour entry for the far
end's 10.253.0.2); the far end holds the TAP's fd and is one of:

* **virtio-net**: one tiny VM (``vnet.kvm.runner``, 16 MiB), its NIC on the TAP: frames pass
  the guest's virtqueues, the runner's device thread (ioeventfd kicks, epoll on the TAP) and
  the guest itself (``send=MAC`` or ``sink``: vnet/guest/tiny/main.c);
* **kernel-only** (``bare TAP``): ``vnet.bench.tapend`` on the same TAP, attached the same way,
  doing one read or write per frame: the TAP and the kernel's side of it, no virtqueues, no
  vCPU.  The ratio of the two is what the VMM and the guest cost.

Three measurements, each over a window of S seconds, from the namespace's side of the TAP:

* **guest -> host**: the far end sends 60-byte frames as fast as it can; a packet socket on
  the TAP counts them (``PACKET_STATISTICS``: every frame it was offered, read or not), and the
  TAP's ``rx_packets`` is shown beside it;
* **host -> guest**: a packet socket writes 60-byte frames into the TAP as fast as it can;
  the far end counts what reaches it and reports the count in a reply frame
  (``vnet.bench.nicframes``), so delivered = counted, offered = written;
* **round trip**: a UDP socket in the namespace sends 18-byte datagrams to port 7 of the far
  end, one at a time, each after the previous echo (p50/p99 in µs).

The far end's CPU (utime + stime from /proc, all its threads: for the VM that includes the
vCPU) is given as a share of one core over each window.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vnet.bench.measure import cpu_model
from vnet.bench.nicframes import COUNT, DATA, ETH_BENCH, QUERY, bench_frame, parse_bench
from vnet.bench.tally import percentile
from vnet.bench.testbed import BenchError
from vnet.host import netns, tap
from vnet.host.afpacket import socket_counts
from vnet.packet.ethernet import mac_to_bytes
from vnet.testing import popen_in_netns, wait_until

TAP = "vmtap0"
TAP_MAC, GUEST_MAC = "02:b0:00:00:01:01", "02:b0:00:00:01:02"
TAP_IP, GUEST_IP = "10.253.0.1", "10.253.0.2"
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
VIRTIO, BARE = "virtio-net", "bare TAP"
PATHS = (VIRTIO, BARE)
READY_WAIT = 60.0  # the far end up and answering; generous on a loaded machine


# ---- pure parts ---------------------------------------------------------------------------------

def stat_cpu_seconds(stat: str, ticks_per_second: int) -> float:
    """utime + stime of a /proc/PID/stat line (all the process's threads), in seconds."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks_per_second


def netdev_packets(proc_net_dev: str, ifname: str) -> tuple[int, int, int, int]:
    """(rx_packets, rx_dropped, tx_packets, tx_dropped) of ``ifname`` in /proc/net/dev's text."""
    for line in proc_net_dev.splitlines():
        name, sep, rest = line.partition(":")
        if sep and name.strip() == ifname:
            f = [int(v) for v in rest.split()]
            return f[1], f[3], f[9], f[11]
    raise BenchError(f"no {ifname} in /proc/net/dev")


@dataclass(frozen=True)
class Rate:
    """Frames through the path in one window: counted at the receiving end, offered by the
    sending one (None where the sender is the far end and cannot say), the far end's CPU."""

    frames: int
    seconds: float
    cpu_seconds: float
    offered: int | None = None

    @property
    def per_second(self) -> float:
        return self.frames / self.seconds

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu_seconds / self.seconds


@dataclass(frozen=True)
class RoundTrip:
    samples_us: tuple[float, ...]
    lost: int
    seconds: float
    cpu_seconds: float

    @property
    def p50(self) -> float:
        return percentile(self.samples_us, 50)

    @property
    def p99(self) -> float:
        return percentile(self.samples_us, 99)

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu_seconds / self.seconds


@dataclass(frozen=True)
class Sitting:
    """One repetition of the three measurements for one far end."""

    path: str
    to_host: Rate
    to_guest: Rate
    round_trip: RoundTrip


def report(sittings: Sequence[Sitting], header: str) -> str:
    """The table: medians over the repetitions, virtio-net beside the bare TAP, and ratios."""
    def med(path: str, value: Callable[[Sitting], float]) -> float:
        values = [value(s) for s in sittings if s.path == path]
        return float(statistics.median(values)) if values else float("nan")

    repeats = sum(1 for s in sittings if s.path == VIRTIO)
    rows: list[tuple[str, Callable[[Sitting], float], str]] = [
        ("guest -> host, frames/s", lambda s: s.to_host.per_second, "k"),
        ("  far end CPU %", lambda s: s.to_host.cpu_percent, "%"),
        ("host -> guest, delivered/s", lambda s: s.to_guest.per_second, "k"),
        ("  offered/s", lambda s: (s.to_guest.offered or 0) / s.to_guest.seconds, "k"),
        ("  far end CPU %", lambda s: s.to_guest.cpu_percent, "%"),
        ("round trip p50, us", lambda s: s.round_trip.p50, "us"),
        ("round trip p99, us", lambda s: s.round_trip.p99, "us"),
        ("  echoes/s", lambda s: len(s.round_trip.samples_us) / s.round_trip.seconds, "k"),
        ("  far end CPU %", lambda s: s.round_trip.cpu_percent, "%")]
    lines = [f"The VM NIC path, median of {repeats} ({header})",
             f"{'':30}{VIRTIO:>12}{BARE:>12}{'ratio':>8}"]
    for label, value, unit in rows:
        vm, bare = med(VIRTIO, value), med(BARE, value)
        ratio = f"{vm / bare:>7.2f}x" if bare and unit != "%" else ""
        lines.append(f"{label:30}{_fmt(vm, unit):>12}{_fmt(bare, unit):>12}{ratio}")
    lost = [s.round_trip.lost for s in sittings]
    lines.append(f"(60-byte frames; round trips back to back, {sum(lost)} echoes lost in all; "
                 "CPU: the far end's share of one core)")
    return "\n".join(lines)


def _fmt(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "-"
    if unit == "k":
        return f"{value / 1000:.1f} k"
    if unit == "%":
        return f"{value:.0f} %"
    return f"{value:.0f}"


# ---- the world: a namespace, a TAP, a far end on it ---------------------------------------------

class FarEnd:
    """The process holding the TAP's fd: a VM runner or the bare TAP loop, in ``mode`` send
    (until stopped, or ``frames`` frames), sink, or plain (a VM without bench options)."""

    def __init__(self, world: NicWorld, path: str, mode: str, frames: int | None = None) -> None:
        self.path, self.mode = path, mode
        self.console = world.tmp / f"console-{mode}.log"
        self.console.unlink(missing_ok=True)
        self.errors = world.tmp / f"stderr-{mode}.log"
        if path == VIRTIO:
            cmdline = {"sink": "sink", "send": f"send={TAP_MAC}", "plain": ""}[mode]
            if frames is not None and mode == "send":
                cmdline += f" frames={frames}"
            command = [sys.executable, "-m", "vnet.kvm.runner", "--name", "vmnic", "--memory",
                       "16M", "--nic", f"tap={TAP},mac={GUEST_MAC},ip={GUEST_IP}/24",
                       "--cmdline", cmdline, "--console-log", str(self.console)]
        else:
            command = [sys.executable, "-m", "vnet.bench.tapend", "--tap", TAP, "--mac",
                       GUEST_MAC, "--ip", GUEST_IP,
                       *(["--sink"] if mode == "sink" else ["--send", TAP_MAC]),
                       *(["--frames", str(frames)] if frames is not None else [])]
        with open(self.errors, "wb") as stderr:
            self.process = popen_in_netns(world.name, command, stdout=subprocess.DEVNULL,
                                          stderr=stderr)

    def check(self) -> None:
        """Raise if the far end has died (with what it said)."""
        if self.process.poll() is not None:
            said = self.errors.read_text()[-800:]
            console = self.console.read_text()[-800:] if self.console.exists() else ""
            raise BenchError(f"the {self.path} far end ({self.mode}) exited with "
                             f"{self.process.returncode}: {said.strip()} {console.strip()}")

    def cpu_seconds(self) -> float:
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        return stat_cpu_seconds(stat, os.sysconf("SC_CLK_TCK"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class NicWorld:
    """The benchmark's namespace with its TAP; ``close`` removes both (and any far end)."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise BenchError("the benchmark needs root (it creates a network namespace)")
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            raise BenchError("/dev/kvm is missing or not accessible: the VM path needs KVM")
        self.name = f"vmnic-{os.getpid()}"
        self.tmp = Path(tempfile.mkdtemp(prefix="vnet-vmnic-"))
        self.far_ends: list[FarEnd] = []
        netns.create(self.name)
        try:
            for key in ("all", "default"):
                self.ip("netns", "exec", self.name, "sysctl", "-qw",
                        f"net.ipv6.conf.{key}.disable_ipv6=1", netns_prefix=False)
            with netns.entered(self.name):
                tap.create_persistent_tap(TAP)
            self.ip("link", "set", "lo", "up")
            self.ip("link", "set", TAP, "address", TAP_MAC, "up")
            self.ip("addr", "add", f"{TAP_IP}/24", "dev", TAP)
            self.ip("neigh", "replace", GUEST_IP, "lladdr", GUEST_MAC, "dev", TAP, "nud",
                    "permanent")
        except BaseException:
            self.close()
            raise

    def ip(self, *args: str, netns_prefix: bool = True) -> None:
        command = ["ip", "-n", self.name, *args] if netns_prefix else ["ip", *args]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BenchError(f"{' '.join(command)}: {result.stderr.strip()}")

    def close(self) -> None:
        for far in self.far_ends:
            far.stop()
        self.far_ends.clear()
        if netns.exists(self.name):
            subprocess.run(["ip", "-n", self.name, "link", "del", TAP], capture_output=True,
                           check=False)
            netns.remove(self.name)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> NicWorld:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def far_end(self, path: str, mode: str, frames: int | None = None) -> Iterator[FarEnd]:
        far = FarEnd(self, path, mode, frames)
        self.far_ends.append(far)
        try:
            yield far
        finally:
            far.stop()
            self.far_ends.remove(far)

    def packet_socket(self, protocol: int, rcvbuf: int | None = None) -> socket.socket:
        """A packet socket on the TAP: receiving ``protocol`` (0: none, a sender)."""
        with netns.entered(self.name):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(protocol))
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            sock.bind((TAP, protocol))
        return sock

    def udp_socket(self) -> socket.socket:
        with netns.entered(self.name):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((TAP_IP, 0))
        return sock

    def tap_packets(self) -> tuple[int, int, int, int]:
        with netns.entered(self.name):
            text = Path("/proc/thread-self/net/dev").read_text()
        return netdev_packets(text, TAP)


# ---- the measurements ------------------------------------------------------------------------

def offered_to_socket(sock: socket.socket) -> int:
    """Frames offered to a packet socket since the last call (queued or dropped alike)."""
    return socket_counts(sock)[0]


def guest_to_host(world: NicWorld, far: FarEnd, seconds: float) -> Rate:
    counter = world.packet_socket(ETH_BENCH)
    try:
        def sending() -> bool:
            far.check()
            return offered_to_socket(counter) > 0

        wait_until(sending, READY_WAIT, f"the {far.path} far end to send frames")
        offered_to_socket(counter)  # from here on
        cpu, start = far.cpu_seconds(), time.perf_counter()
        time.sleep(seconds)  # the measurement window itself
        frames = offered_to_socket(counter)
        return Rate(frames, time.perf_counter() - start, far.cpu_seconds() - cpu)
    finally:
        counter.close()


def query(sender: socket.socket, replies: socket.socket, far: FarEnd) -> int:
    """The far end's count of data frames, asked until it answers (a query can be lost in a
    full TAP queue)."""
    ask = bench_frame(mac_to_bytes(GUEST_MAC), mac_to_bytes(TAP_MAC), QUERY)

    def answered() -> int | None:
        far.check()
        sender.send(ask)
        replies.settimeout(0.5)
        try:
            while True:
                frame = parse_bench(replies.recv(128))
                if frame is not None and frame.kind == COUNT:
                    return frame.value + 1  # +1: a count of 0 is an answer too
        except TimeoutError:
            return None

    count = wait_until(answered, READY_WAIT, f"the {far.path} far end to answer a query",
                       interval=0)
    assert count is not None  # wait_until returns only a true value
    return count - 1


def host_to_guest(world: NicWorld, far: FarEnd, seconds: float) -> Rate:
    sender, replies = world.packet_socket(0), world.packet_socket(ETH_BENCH)
    try:
        sender.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 4 << 20)
        before = query(sender, replies, far)
        dst, src = mac_to_bytes(GUEST_MAC), mac_to_bytes(TAP_MAC)
        frames = [bench_frame(dst, src, DATA, seq) for seq in range(256)]
        sent = 0
        cpu, start = far.cpu_seconds(), time.perf_counter()
        end = start + seconds
        while time.perf_counter() < end:
            for frame in frames:
                try:
                    sender.send(frame)
                    sent += 1
                except OSError:
                    pass  # ENOBUFS: not offered
        elapsed, used = time.perf_counter() - start, far.cpu_seconds() - cpu
        counted = query(sender, replies, far) - before
        return Rate(counted, elapsed, used, offered=sent)
    finally:
        sender.close()
        replies.close()


def round_trip(world: NicWorld, far: FarEnd, seconds: float, warmup: int = 50) -> RoundTrip:
    sock = world.udp_socket()
    try:
        sock.connect((GUEST_IP, 7))
        sock.settimeout(0.5)
        samples: list[float] = []
        lost, seq = 0, 0
        cpu = start = 0.0
        end = float("inf")
        while time.perf_counter() < end:
            seq += 1
            if seq == warmup + 1:  # the window starts after the warm-up
                cpu, start = far.cpu_seconds(), time.perf_counter()
                end, samples, lost = start + seconds, [], 0
            payload = struct.pack("!Q10x", seq)
            sent = time.perf_counter_ns()
            sock.send(payload)
            try:
                while sock.recv(64)[:8] != payload[:8]:
                    pass  # a late echo of an earlier datagram
                samples.append((time.perf_counter_ns() - sent) / 1000)
            except TimeoutError:
                lost += 1
                far.check()
        return RoundTrip(tuple(samples), lost, time.perf_counter() - start,
                         far.cpu_seconds() - cpu)
    finally:
        sock.close()


def sit(world: NicWorld, path: str, seconds: float) -> Sitting:
    with world.far_end(path, "send") as far:
        to_host = guest_to_host(world, far, seconds)
    with world.far_end(path, "sink") as far:
        to_guest = host_to_guest(world, far, seconds)
        rtt = round_trip(world, far, seconds)
    return Sitting(path, to_host, to_guest, rtt)


def describe(s: Sitting) -> str:
    return (f"{s.path}: guest->host {s.to_host.per_second / 1000:.1f} k/s "
            f"(CPU {s.to_host.cpu_percent:.0f} %), host->guest {s.to_guest.per_second / 1000:.1f}"
            f" k/s of {(s.to_guest.offered or 0) / s.to_guest.seconds / 1000:.1f} k/s offered "
            f"(CPU {s.to_guest.cpu_percent:.0f} %), round trip p50 {s.round_trip.p50:.0f} us "
            f"p99 {s.round_trip.p99:.0f} us (CPU {s.round_trip.cpu_percent:.0f} %)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vnet.bench.vmnic",
                                     description="frames/s and round trip through a VM's "
                                     "virtio-net NIC, against the bare TAP")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="each measurement's window (default 2)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.seconds <= 0:
        parser.error("--repeat must be 1 or more and --seconds above 0")
    sittings: list[Sitting] = []
    started = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())
    try:
        from vnet.guest.build import build_tiny_guest

        build_tiny_guest()  # once, before anything is timed
        with NicWorld() as world:
            for i in range(1, args.repeat + 1):
                for path in PATHS if i % 2 else PATHS[::-1]:  # alternate who goes first
                    sittings.append(sit(world, path, args.seconds))
                    print(f"{i} {describe(sittings[-1])}", flush=True)
    except (BenchError, OSError) as err:
        print(f"vmnic: {err}", file=sys.stderr)
        return 1
    except AssertionError as err:  # a far end that never became ready
        print(f"vmnic: {err}", file=sys.stderr)
        return 1
    print()
    print(report(sittings, f"{cpu_model()}, {os.cpu_count()} cores, kernel "
                           f"{os.uname().release}, {args.seconds:g} s windows, {started}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
