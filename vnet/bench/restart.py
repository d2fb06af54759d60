"""What a datapath crash costs: frames lost per ``kill -9`` and time to forwarding again.

    python -m vnet.bench.restart [--kills 7] [--interval 0.01]

Brings up two namespace nodes on a private host (``vnet.testing.TestHost``), pings from one
to the other every ``--interval`` seconds (``ping -D``: each reply carries its time), and
kills the datapath ``--kills`` times, ``--spacing`` seconds apart and each time once
forwarding is back.  Per kill it reports
the pings lost (the run of missing sequence numbers after the kill) and the time from the
kill to the first reply after them; then the medians, the CPU, and vnetd's and the
datapath's CPU time while idle.  Needs root; run it under the integration lock.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import time
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


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m vnet.bench.restart")
    parser.add_argument("--kills", type=int, default=7)
    parser.add_argument("--spacing", type=float, default=6.0,
                        help="seconds between kills (more than the restart policy's stable run: "
                             "each kill is then a first crash, restarted at once)")
    parser.add_argument("--interval", type=float, default=0.01)
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
        ping = popen_in_netns(lab.netns("left"), ["ping", "-D", "-n", "-i", str(args.interval),
                                                   "10.2.0.2"],
                              stdout=subprocess.PIPE, text=True)
        replies: dict[int, float] = {}
        kills: list[float] = []
        try:
            assert ping.stdout is not None
            os.set_blocking(ping.stdout.fileno(), False)

            def read() -> None:
                for line in ping.stdout.readlines() if ping.stdout else []:
                    match = REPLY.match(line)
                    if match:
                        replies[int(match[2])] = float(match[1])

            def replied_since(when: float) -> bool:
                read()
                return sum(t > when for t in replies.values()) >= 20

            wait_until(lambda: replied_since(0), 30, "pings to be answered")
            for _ in range(args.kills):
                pid = host.call("ping")["datapath_pid"]
                kills.append(time.time())
                os.kill(pid, signal.SIGKILL)
                wait_until(lambda k=kills[-1]: replied_since(k), 60,  # type: ignore[misc]
                           "forwarding after the kill")
                time.sleep(max(0.0, kills[-1] + args.spacing - time.time()))
        finally:
            ping.terminate()
            ping.wait()
        results = [outage_after(k, replies) for k in kills]
        for i, r in enumerate(results, 1):
            print(f"kill {i}: {r.lost} pings lost, forwarding again after {r.outage:.3f} s")
        print(f"median: {statistics.median(r.lost for r in results)} pings lost "
              f"(at {args.interval * 1000:.0f} ms), forwarding again after "
              f"{statistics.median(r.outage for r in results):.3f} s")
        model = next(line.split(":", 1)[1].strip() for line in
                     Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
        print(f"cpu: {model}, {os.cpu_count()} cores; idle CPU: vnetd {idle[0] * 100:.2f} %, "
              f"datapath {idle[1] * 100:.2f} %")
        host.down(lab.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
