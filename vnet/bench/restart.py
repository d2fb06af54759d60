"""What a restart costs: frames lost while vnetd or the datapath restarts, and time to
forwarding again (``docs/service.md``, ``docs/benchmarks.md``).

    python -m vnet.bench.restart [--repeat 5] [--interval 0.001] [--udp-period 0.001] [--idle S]
                                 [--cases vnetd-term,vnetd-kill,datapath-kill,...]

Brings up two namespace nodes on a private host (``vnet.testing.TestHost``).  For each case
and repetition it starts two fresh streams from one node to the other, ``ping -D -i
INTERVAL`` (1 ms: needs root) and UDP datagrams paced by the clock every ``--udp-period``
(ping sends less often while it gets no replies, so its count undercounts an outage; the
datagrams do not), disrupts, waits until vnetd reports the control side back and both
streams have flowed again for a while, stops them, and counts (``vnet.bench.restartloss``).
The cases take turns within a repetition, so the machine's noise falls on all alike:

* ``datapath-kill``: SIGKILL to vnetd's own datapath (its death heard by the lifeline);
* ``vnetd-term``: vnetd stopped with SIGTERM (``systemctl stop``) and started again: the
  datapath forwards on and is adopted;
* ``datapath-kill-adopted``: SIGKILL to a datapath adopted by the vnetd, as after any vnetd
  restart (its death heard by the new lifeline the adopting vnetd asked it for, or by a
  pidfd if it has none);
* ``vnetd-kill``: vnetd killed with SIGKILL and started again;
* ``datapath-term``: SIGTERM to the (adopted) datapath, which then exits cleanly.  vnetd has no
  graceful datapath restart or upgrade: a clean exit is restarted and replayed like a crash,
  into the warm spare, which runs the code it loaded when it was spawned.

A datapath case waits for vnetd's warm spare, and for the restart policy to count it a first
crash (restarted at once, no back-off).  Needs root; run it under the integration lock.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vnet.bench import restartloss
from vnet.bench.restartloss import Accounting, Loss, spread
from vnet.daemon.restartpolicy import Limits
from vnet.testing import Lab, TestHost, popen_in_netns, wait_until

PAIR = """\
name: pair
networks:
  net: {vlan: 100}
nodes:
  left:  {kind: netns, nics: [{name: eth0, network: net, ip: 10.2.0.1/24}]}
  right: {kind: netns, nics: [{name: eth0, network: net, ip: 10.2.0.2/24}]}
"""
CASES = {
    "datapath-kill": "datapath SIGKILL (vnetd's own child)",
    "vnetd-term": "vnetd SIGTERM, started again",
    "datapath-kill-adopted": "datapath SIGKILL (adopted by vnetd)",
    "vnetd-kill": "vnetd SIGKILL, started again",
    "datapath-term": "datapath SIGTERM (clean exit)",
}
ADOPTED = {"datapath-kill": False, "datapath-kill-adopted": True}   # what the case needs
FLOWING = 100   # arrivals of each stream before the disruption, and after it is over

SENDER = """
import signal, socket, sys, time
stop = False
def stopped(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, stopped)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
period, sent, due = float(sys.argv[1]), 0, time.monotonic()
while not stop:
    try:
        sock.sendto(b"%d" % (sent + 1), ("10.2.0.2", 9999))
        sent += 1
    except OSError:
        pass
    due += period
    pause = due - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    else:   # late (a stall): no burst to catch up, the rate stays at most one per period
        due = time.monotonic()
for _ in range(50):   # the end, sent after every datagram: it arrives after them, or is lost
    sock.sendto(b"end %d" % sent, ("10.2.0.2", 9999))
    time.sleep(0.002)
"""
RECEIVER = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
# 16 MiB (root may pass rmem_max): a receiver starved of CPU for seconds on a loaded machine,
# or blocked on its stdout pipe, must not drop what the switch delivered and count it lost
sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)   # SO_RCVBUFFORCE
sock.bind(("10.2.0.2", 9999))
while True:
    data = sock.recv(64).decode()
    if data.startswith("end "):
        print(data)
        break
    print("%s %.6f" % (data, time.time()), flush=True)
"""


class Stream:
    """A process whose output lines tell which sequence number arrived when, read as they
    come (by a thread: a full pipe would stall the process, and its socket would drop)."""

    def __init__(self, process: subprocess.Popen[str],
                 parse: Callable[[str], tuple[int, float] | None]) -> None:
        self.process, self.parse = process, parse
        self.arrivals: dict[int, float] = {}
        self.other: list[str] = []     # lines that are not arrivals (a summary, an end)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            parsed = self.parse(line)
            if parsed:
                self.arrivals.setdefault(parsed[0], parsed[1])
            else:
                self.other.append(line.strip())

    def read(self) -> dict[int, float]:
        return dict(self.arrivals)

    def arrived_since(self, when: float, count: int = FLOWING) -> bool:
        return sum(t > when for t in self.read().values()) >= count

    def end(self, sig: int | None = signal.SIGINT) -> None:
        """Stop the process (``sig``, or wait for it to end by itself) and read the rest."""
        if sig is not None and self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(10)


@dataclass(frozen=True)
class Run:
    """One case, once."""

    case: str
    at: float                  # when (time.time()) the signal was sent
    ping: Loss
    udp: Loss
    control_back: float        # s from the disruption to vnetd answering with a datapath
    ping_accounting: Accounting
    udp_accounting: Accounting
    restart_attempt: int       # the policy's attempt for a datapath case (1: a first crash)


class Bench:
    """The host and lab the cases run on, and what pacing the datapath's cases needs."""

    def __init__(self, host: TestHost, lab: Lab, interval: float, udp_period: float) -> None:
        self.host, self.lab = host, lab
        self.interval, self.udp_period = interval, udp_period
        self.datapath_restarted_at = 0.0   # monotonic: the last restart by this vnetd

    @classmethod
    def up(cls, host: TestHost, interval: float = 0.001, udp_period: float = 0.001) -> Bench:
        topology = host.workdir / "pair.yaml"
        topology.write_text(PAIR)
        return cls(host, host.up(topology), interval, udp_period)

    def datapath(self) -> dict[str, Any]:
        health: dict[str, Any] = self.host.call("ping")["datapath"]
        return health

    def run(self, case: str) -> Run:
        if case not in CASES:
            raise ValueError(f"unknown case {case!r}: choose from {', '.join(CASES)}")
        if case.startswith("datapath"):
            self._pace(ADOPTED.get(case))
        left, right = self.lab.netns("left"), self.lab.netns("right")
        ping = Stream(popen_in_netns(left, ["ping", "-D", "-n", "-i", str(self.interval),
                                            "10.2.0.2"], stdout=subprocess.PIPE, text=True),
                      restartloss.parse_ping_reply)
        udp = Stream(popen_in_netns(right, [sys.executable, "-u", "-c", RECEIVER],
                                    stdout=subprocess.PIPE, text=True),
                     restartloss.parse_datagram)
        sender = popen_in_netns(left, [sys.executable, "-c", SENDER, str(self.udp_period)])
        try:
            wait_until(lambda: ping.arrived_since(0) and udp.arrived_since(0), 30,
                       "pings and datagrams to arrive")
            at, back, attempt = self._disrupt(case)
            wait_until(lambda: ping.arrived_since(at + back) and udp.arrived_since(at + back),
                       60, f"pings and datagrams to flow again after {case}")
        finally:
            sender.send_signal(signal.SIGTERM)
            sender.wait(10)
            ping.end()
            udp.end(sig=None)
        summary = restartloss.parse_ping_summary(ping.other)
        ends = [line for line in udp.other if line.startswith("end ")]
        if summary is None or not ends:
            raise RuntimeError(f"a stream ended without its count: ping {ping.other!r}, "
                               f"receiver {udp.other!r}")
        pings, datagrams = ping.read(), udp.read()
        return Run(case, at, restartloss.loss_after(at, pings),
                   restartloss.loss_after(at, datagrams), back,
                   restartloss.accounting(summary[0], pings, summary[1]),
                   restartloss.accounting(int(ends[0].split()[1]), datagrams, None), attempt)

    def _pace(self, adopted: bool | None) -> None:
        """Before a datapath case: the warm spare is ready, the datapath is (or is not, as
        the case needs) an adopted one, and the restart policy will count the death a first
        crash (a run of ``stable`` seconds since this vnetd's last restart of it; a new
        vnetd, which adopted it, starts with a clean slate)."""
        wait_until(lambda: self.datapath()["standby_pid"] is not None, 30,
                   "vnetd's warm spare datapath")
        health = self.datapath()
        if adopted is not None and health["adopted"] != adopted:
            raise RuntimeError(f"the datapath is {'not ' if adopted else ''}an adopted one: "
                               f"run the cases in the order {', '.join(CASES)}")
        if not health["adopted"]:
            time.sleep(max(0.0, self.datapath_restarted_at + Limits().stable + 0.5
                           - time.monotonic()))

    def _disrupt(self, case: str) -> tuple[float, float, int]:
        """Do ``case``; (its time, s until vnetd answers with a running datapath again, the
        restart policy's attempt)."""
        old = self.host.call("ping")["datapath_pid"]
        at = time.time()
        if case.startswith("vnetd"):
            if case == "vnetd-term":
                self.host.terminate_daemon()
            else:
                self.host.kill_daemon()
            self.host.start_daemon()
            answer = self.host.call("ping")
            if answer["datapath_pid"] != old or not answer["datapath"]["adopted"]:
                raise RuntimeError(f"vnetd did not adopt the datapath (pid {old}): {answer}")
            return at, time.time() - at, 0
        os.kill(old, signal.SIGKILL if case.endswith("kill") else signal.SIGTERM)

        def restarted() -> dict[str, Any]:   # empty (false) until then
            health = self.datapath()
            running = health["pid"] not in (None, old) and health["state"] == "running"
            return health if running else {}

        health: dict[str, Any] = wait_until(restarted, 60, f"a new datapath after {case}")
        self.datapath_restarted_at = time.monotonic()
        return at, time.time() - at, int(health["attempt"])


def report(runs: Sequence[Run], interval: float, udp_period: float) -> list[str]:
    """Per case: the medians (min..max) of its repetitions."""
    lines = [f"| case | pings lost (every {interval * 1000:g} ms) | datagrams lost (every "
             f"{udp_period * 1000:g} ms) | forwarding again after (datagrams) | longest "
             f"silence (datagrams) | vnetd answers again after | runs |",
             "|---|---|---|---|---|---|---|"]
    def sec(values: list[float]) -> str:
        return spread([v * 1000 for v in values]).text("{:.0f} ms")

    for case, label in CASES.items():
        mine = [r for r in runs if r.case == case]
        if not mine:
            continue
        lines.append(
            f"| {label} | {spread([r.ping.lost for r in mine]).text()} "
            f"| {spread([r.udp.lost for r in mine]).text()} "
            f"| {sec([r.udp.back_after for r in mine])} "
            f"| {sec([r.udp.longest_silence for r in mine])} "
            f"| {sec([r.control_back for r in mine])} | {len(mine)} |")
    return lines


def cpu_model() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    return f"{model}, {os.cpu_count()} cores"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(host: TestHost, seconds: float) -> str:
    """vnetd's and the datapath's share of a core over ``seconds`` of idle (from /proc, at
    its 10 ms resolution)."""
    assert host.process is not None
    pids = (host.process.pid, host.call("ping")["datapath_pid"])
    before = [cpu_seconds(pid) for pid in pids]
    time.sleep(seconds)
    used = [(cpu_seconds(pid) - b) / seconds * 100 for pid, b in zip(pids, before, strict=True)]
    return f"idle CPU over {seconds:g} s: vnetd {used[0]:.2f} %, datapath {used[1]:.2f} %"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vnet.bench.restart")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of every case")
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"which, in this order (default all): {','.join(CASES)}")
    parser.add_argument("--interval", type=float, default=0.001, help="ping's interval")
    parser.add_argument("--udp-period", type=float, default=0.001,
                        help="one datagram every this many seconds, paced by the clock")
    parser.add_argument("--idle", type=float, default=0.0,
                        help="first measure vnetd's and the datapath's CPU over this many "
                             "seconds of idle (default 0: not)")
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown or args.repeat < 1:
        parser.error(f"unknown case {', '.join(unknown)}: choose from {', '.join(CASES)}"
                     if unknown else "--repeat must be 1 or more")
    if os.geteuid() != 0:
        parser.error("needs root (namespaces, and ping -i below 2 ms): run it with sudo")
    runs: list[Run] = []
    started = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())
    with TestHost() as host:
        bench = Bench.up(host, args.interval, args.udp_period)
        if args.idle > 0:
            print(idle_cpu(host, args.idle), flush=True)
        for i in range(1, args.repeat + 1):
            for case in cases:
                run = bench.run(case)
                runs.append(run)
                problems = run.ping_accounting.problems + run.udp_accounting.problems
                print(f"{i} {case}: {run.ping.lost} pings, {run.udp.lost} datagrams lost; "
                      f"forwarding again after {run.udp.back_after * 1000:.0f} ms, longest "
                      f"silence {run.udp.longest_silence * 1000:.0f} ms, vnetd back after "
                      f"{run.control_back * 1000:.0f} ms"
                      + (f", policy attempt {run.restart_attempt}" if run.restart_attempt
                         else "") + (f"; ACCOUNTING: {'; '.join(problems)}" if problems
                                     else ""), flush=True)
        host.down(bench.lab.name)
    print()
    print("\n".join(report(runs, args.interval, args.udp_period)))
    print(f"\nMedian (min..max) of {args.repeat} repetitions; {cpu_model()}; {started}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
