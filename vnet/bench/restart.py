"""What a datapath crash costs: frames lost per ``kill -9`` and time to forwarding again.

    python -m vnet.bench.restart [--kills 7] [--interval 0.01] [--udp-period 0.001]

Brings up two namespace nodes on a private host (``vnet.testing.TestHost``) and runs two
streams from one to the other: ``ping -D -i INTERVAL`` (each reply carries its time; the
figure the issue was filed with) and UDP datagrams paced by the clock every ``--udp-period``
(ping sends less often while it gets no replies, about 62 instead of 100 a second at 10 ms,
so its losses undercount an outage; the datagrams do not).  It kills the datapath
``--kills`` times, ``--spacing`` seconds apart and each time once both streams flow again,
and reports per kill what each stream lost (the run of missing sequence numbers after the
kill) and the time from the kill to the first arrival after them; then the medians, the CPU,
and vnetd's and the datapath's CPU time while idle.  Needs root; run it under the
integration lock.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vnet.testing import TestHost, popen_in_netns, wait_until

PAIR = """\
name: pair
networks:
  net: {vlan: 100}
nodes:
  left:  {kind: netns, nics: [{name: eth0, network: net, ip: 10.2.0.1/24}]}
  right: {kind: netns, nics: [{name: eth0, network: net, ip: 10.2.0.2/24}]}
"""
REPLY = re.compile(r"^\[(\d+\.\d+)\] .*icmp_seq=(\d+) ")


@dataclass(frozen=True)
class Kill:
    lost: int            # pings without a reply after the kill
    outage: float        # seconds from the kill to the first reply after them


def outage_after(kill_at: float, replies: dict[int, float]) -> Kill:
    """The gap of missing sequence numbers that follows ``kill_at`` in ``replies``
    (sequence number -> reply time)."""
    seqs = sorted(replies)
    before = [s for s in seqs if replies[s] <= kill_at]
    last = before[-1] if before else 0
    after = [s for s in seqs if s > last + 1 and replies[s] > kill_at]
    gap_end = next((s for s in after if s - 1 not in replies), None)
    if gap_end is None:
        return Kill(0, 0.0)
    gap_start = max(s for s in seqs if s < gap_end)
    return Kill(gap_end - gap_start - 1, replies[gap_end] - kill_at)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SENDER = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
period, seq, due = float(sys.argv[1]), 0, time.monotonic()
while True:
    seq += 1
    sock.sendto(b"%d" % seq, ("10.2.0.2", 9999))
    due += period
    pause = due - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    else:   # late (a stall): no burst to catch up, the rate stays at most one per period
        due = time.monotonic()
"""
RECEIVER = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("10.2.0.2", 9999))
while True:
    seq = sock.recv(64)
    sys.stdout.write("%s %.6f\\n" % (seq.decode(), time.time()))
    sys.stdout.flush()
"""


class Stream:
    """A process whose output lines tell which sequence number arrived when, read as they
    come (by a thread: a full pipe would stall the process, and its socket would drop)."""

    def __init__(self, process: subprocess.Popen[str],
                 parse: Callable[[str], tuple[int, float] | None]) -> None:
        self.process, self.parse = process, parse
        self.arrivals: dict[int, float] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            parsed = self.parse(line)
            if parsed:
                self.arrivals[parsed[0]] = parsed[1]

    def read(self) -> dict[int, float]:
        return dict(self.arrivals)

    def arrived_since(self, when: float, count: int = 20) -> bool:
        return sum(t > when for t in self.read().values()) >= count

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()
        self._reader.join(10)


def _ping_reply(line: str) -> tuple[int, float] | None:
    match = REPLY.match(line)
    return (int(match[2]), float(match[1])) if match else None


def _datagram(line: str) -> tuple[int, float] | None:
    seq, _, when = line.partition(" ")
    return (int(seq), float(when)) if when else None


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m vnet.bench.restart")
    parser.add_argument("--kills", type=int, default=7)
    parser.add_argument("--spacing", type=float, default=6.0,
                        help="seconds between kills (more than the restart policy's stable run: "
                             "each kill is then a first crash, restarted at once)")
    parser.add_argument("--interval", type=float, default=0.01, help="ping's interval")
    parser.add_argument("--udp-period", type=float, default=0.001,
                        help="one datagram every this many seconds, paced by the clock")
    parser.add_argument("--idle", type=float, default=10.0,
                        help="seconds of idle to measure vnetd's and the datapath's CPU over")
    args = parser.parse_args()
    with TestHost() as host:
        topology = host.workdir / "pair.yaml"
        topology.write_text(PAIR)
        lab = host.up(topology)
        assert host.process is not None
        dp = host.call("ping")["datapath_pid"]
        vnetd_cpu, dp_cpu = cpu_seconds(host.process.pid), cpu_seconds(dp)
        time.sleep(args.idle)
        idle = ((cpu_seconds(host.process.pid) - vnetd_cpu) / args.idle,
                (cpu_seconds(dp) - dp_cpu) / args.idle)
        left, right = lab.netns("left"), lab.netns("right")
        streams = [
            Stream(popen_in_netns(left, ["ping", "-D", "-n", "-i", str(args.interval),
                                         "10.2.0.2"], stdout=subprocess.PIPE, text=True),
                   _ping_reply),
            Stream(popen_in_netns(right, [sys.executable, "-c", RECEIVER],
                                  stdout=subprocess.PIPE, text=True), _datagram)]
        sender = popen_in_netns(left, [sys.executable, "-c", SENDER, str(args.udp_period)])
        kills: list[float] = []
        try:
            wait_until(lambda: all(s.arrived_since(0) for s in streams), 30,
                       "pings and datagrams to arrive")
            for _ in range(args.kills):
                pid = host.call("ping")["datapath_pid"]
                kills.append(time.time())
                os.kill(pid, signal.SIGKILL)
                wait_until(lambda k=kills[-1]: all(  # type: ignore[misc]
                    s.arrived_since(k) for s in streams), 60, "forwarding after the kill")
                time.sleep(max(0.0, kills[-1] + args.spacing - time.time()))
        finally:
            sender.terminate()
            sender.wait()
            for stream in streams:
                stream.stop()
        pings = [outage_after(k, streams[0].read()) for k in kills]
        datagrams = [outage_after(k, streams[1].read()) for k in kills]
        for i, (p, d) in enumerate(zip(pings, datagrams, strict=True), 1):
            print(f"kill {i}: {p.lost} pings lost, {d.lost} datagrams lost; forwarding again "
                  f"after {p.outage:.3f} s (pings), {d.outage:.3f} s (datagrams)")
        print(f"median: {statistics.median(p.lost for p in pings)} pings lost (every "
              f"{args.interval * 1000:g} ms), {statistics.median(d.lost for d in datagrams)} "
              f"datagrams lost (every {args.udp_period * 1000:g} ms); forwarding again after "
              f"{statistics.median(p.outage for p in pings):.3f} s (pings), "
              f"{statistics.median(d.outage for d in datagrams):.3f} s (datagrams)")
        model = next(line.split(":", 1)[1].strip() for line in
                     Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
        print(f"cpu: {model}, {os.cpu_count()} cores; idle CPU: vnetd {idle[0] * 100:.2f} %, "
              f"datapath {idle[1] * 100:.2f} %")
        host.down(lab.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
