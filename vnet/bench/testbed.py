"""The benchmark's private world: a bench-host namespace holding the switch, two node namespaces.

::

    [A: eth0 10.254.0.1] --veth-- pa [HOST: the switch] pb --veth-- [B: eth0 10.254.0.2]

The switch in the host namespace is one of three systems (``Bridge``, ``Ovs``, ``Vnet``).
Everything lives in namespaces the benchmark creates and is removed by ``Testbed.close``,
processes included, also on failure or Ctrl-C: nothing is ever created in the root namespace
and no traffic leaves these namespaces.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vnet import jsonlines
from vnet.datapath import protocol
from vnet.errors import DatapathError, VnetError
from vnet.switch import DEFAULT_MAC_LIMIT, VlanOptions

ADDR_A, ADDR_B = "10.254.0.1", "10.254.0.2"
MAC_A, MAC_B = "02:b0:00:00:00:0a", "02:b0:00:00:00:0b"
SINK_ADDR = "10.254.0.200"  # nobody's: the receiver drops the frames silently (no ICMP)
BENCH_VLAN = 10
NETNS_DIR = Path("/run/netns")


class BenchError(VnetError):
    """The benchmark cannot run here (missing tool, no root, a step failed)."""


def run(cmd: list[str], check: bool = True, timeout: float = 120.0,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed ({result.returncode}): "
                         f"{(result.stderr or result.stdout).strip()[-500:]}")
    return result


def ns_cmd(netns: str, cmd: list[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *cmd]


class Testbed:
    """Namespaces and veths; processes started through it are killed by ``close``."""

    def __init__(self, tag: str | None = None) -> None:
        if os.geteuid() != 0:
            raise BenchError("the benchmark needs root (it creates network namespaces)")
        tag = tag or f"vb{os.getpid() % 100000}"
        self.host, self.node_a, self.node_b = f"{tag}-h", f"{tag}-a", f"{tag}-b"
        self.port_a, self.port_b = "pa", "pb"
        self.tmp = Path(tempfile.mkdtemp(prefix="vnet-bench-"))
        self.procs: list[subprocess.Popen[Any]] = []
        self.created: list[str] = []

    # ---- building ---------------------------------------------------------------------------

    def add_namespaces(self, *names: str) -> None:
        """Fresh namespaces without IPv6 (no stray solicitations in the figures), lo up."""
        for name in names:
            if (NETNS_DIR / name).exists():
                raise BenchError(f"network namespace {name} exists already; remove it with "
                                 f"'ip netns del {name}' if a killed benchmark left it")
            run(["ip", "netns", "add", name])
            self.created.append(name)
            self.sysctl(name, "net.ipv6.conf.all.disable_ipv6", "1")
            self.sysctl(name, "net.ipv6.conf.default.disable_ipv6", "1")
            run(["ip", "-n", name, "link", "set", "lo", "up"])

    def build(self) -> None:
        self.add_namespaces(self.host, self.node_a, self.node_b)
        for port, node, addr, mac in ((self.port_a, self.node_a, ADDR_A, MAC_A),
                                      (self.port_b, self.node_b, ADDR_B, MAC_B)):
            run(["ip", "-n", self.host, "link", "add", port, "type", "veth",
                 "peer", "name", "eth0", "netns", node])
            run(["ip", "-n", node, "link", "set", "eth0", "address", mac])
            run(["ip", "-n", node, "addr", "add", f"{addr}/24", "dev", "eth0"])
            run(["ip", "-n", node, "link", "set", "eth0", "up"])
            run(["ip", "-n", self.host, "link", "set", port, "up"])
        # static neighbours: no ARP traffic or ARP-induced latency in the measurements
        run(["ip", "-n", self.node_a, "neigh", "replace", ADDR_B, "lladdr", MAC_B, "dev",
             "eth0", "nud", "permanent"])
        run(["ip", "-n", self.node_b, "neigh", "replace", ADDR_A, "lladdr", MAC_A, "dev",
             "eth0", "nud", "permanent"])

    def sysctl(self, netns: str, key: str, value: str) -> None:
        run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", f"{key}={value}"])

    # ---- processes --------------------------------------------------------------------------

    def spawn(self, cmd: list[str], netns: str | None = None, **kwargs: Any
              ) -> subprocess.Popen[Any]:
        full = ns_cmd(netns, cmd) if netns else cmd
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        proc: subprocess.Popen[Any] = subprocess.Popen(full, start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], sig: int = signal.SIGTERM,
             timeout: float = 5.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        if proc in self.procs:
            self.procs.remove(proc)

    # ---- counters ---------------------------------------------------------------------------

    def link_stats(self, netns: str, ifname: str) -> tuple[int, int]:
        """``(rx_packets, tx_packets)`` of a netdev inside a namespace."""
        out = run(ns_cmd(netns, ["cat", f"/sys/class/net/{ifname}/statistics/rx_packets",
                                 f"/sys/class/net/{ifname}/statistics/tx_packets"])).stdout
        rx, tx = out.split()
        return int(rx), int(tx)

    # ---- teardown ---------------------------------------------------------------------------

    def close(self) -> None:
        for proc in list(reversed(self.procs)):
            self.stop(proc, timeout=3.0)
        # any process still inside our namespaces (a helper a tool forked) goes too
        for name in self.created:
            pids = run(["ip", "netns", "pids", name], check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        for name in reversed(self.created):
            run(["ip", "netns", "del", name], check=False)
        self.created.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---- the three systems ------------------------------------------------------------------------


class System:
    name = "system"
    label = "system"

    def __init__(self, bed: Testbed) -> None:
        self.bed = bed

    @classmethod
    def available(cls) -> str | None:
        """None if it can run here, else why not."""
        return None

    def start(self, mac_table: int) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Undo ``start`` (the namespace teardown does the rest)."""

    def table_memory(self) -> int:
        """Bytes the forwarding process/kernel holds for its MAC table and state (for deltas)."""
        raise NotImplementedError

    def table_entries(self) -> int:
        raise NotImplementedError

    def flush_table(self) -> None:
        raise NotImplementedError

    def port_losses(self) -> dict[str, int]:
        """The switch's own counts of frames it received but did not learn from or lost
        (cumulative, by reason), where it keeps any: for telling the bench's figures apart."""
        return {}


class Bridge(System):
    name, label = "bridge", "Linux bridge"

    @classmethod
    def available(cls) -> str | None:
        return None if shutil.which("bridge") else "the 'bridge' tool (iproute2) is missing"

    def start(self, mac_table: int) -> None:
        h = self.bed.host
        run(["ip", "-n", h, "link", "add", "br0", "type", "bridge"])
        for port in (self.bed.port_a, self.bed.port_b):
            run(["ip", "-n", h, "link", "set", port, "master", "br0"])
        run(["ip", "-n", h, "link", "set", "br0", "up"])

    def stop(self) -> None:
        run(["ip", "-n", self.bed.host, "link", "del", "br0"], check=False)

    def table_memory(self) -> int:
        # FDB entries come from a slab cache that SLUB may merge with others, and the hash
        # table's buckets are vmalloc'ed when large: count the kernel's slab + vmalloc growth
        total = 0
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Slab", "VmallocUsed"):
                    total += int(value.split()[0]) * 1024
        return total

    def table_entries(self) -> int:
        out = run(["bridge", "-n", self.bed.host, "fdb", "show", "br", "br0"],
                  timeout=600).stdout
        return sum(1 for line in out.splitlines() if "permanent" not in line)

    def flush_table(self) -> None:
        # ip-link's ageing_time is in hundredths of a second (the kernel's clock_t): 30000 is
        # the default 300 s; "300" made it 3 s, and a 200 k sweep aged out while counted
        run(["ip", "-n", self.bed.host, "link", "set", "br0", "type", "bridge",
             "ageing_time", "30000"], check=False)
        run(["bridge", "-n", self.bed.host, "fdb", "flush", "dev", "br0"], check=False)


class Ovs(System):
    """Open vSwitch's userspace datapath, with daemons and database of its own under tmp."""

    name, label = "ovs", "OVS userspace"
    SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")

    def __init__(self, bed: Testbed) -> None:
        super().__init__(bed)
        self.dir = bed.tmp / "ovs"
        self.db_sock = self.dir / "db.sock"
        self.vswitchd: subprocess.Popen[Any] | None = None
        self.env = {**os.environ, "OVS_RUNDIR": str(self.dir), "OVS_DBDIR": str(self.dir),
                    "OVS_LOGDIR": str(self.dir), "OVS_SYSCONFDIR": str(self.dir),
                    "OVS_PKGDATADIR": "/usr/share/openvswitch"}

    @classmethod
    def available(cls) -> str | None:
        for tool in ("ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovsdb-tool"):
            if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
                return "Open vSwitch is not installed (apt-get install openvswitch-switch)"
        if not cls.SCHEMA.exists():
            return f"{cls.SCHEMA} is missing"
        return None

    def vsctl(self, *args: str) -> str:
        return run(["ovs-vsctl", f"--db=unix:{self.db_sock}", "--timeout=30", *args],
                   env=self.env).stdout

    def start(self, mac_table: int) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        db = self.dir / "conf.db"
        run(["ovsdb-tool", "create", str(db), str(self.SCHEMA)], env=self.env)
        d = self.dir
        self.bed.spawn(["ovsdb-server", str(db), f"--remote=punix:{self.db_sock}",
                        f"--unixctl={d}/ovsdb-server.ctl", f"--pidfile={d}/ovsdb-server.pid",
                        f"--log-file={d}/ovsdb-server.log", "--no-chdir"],
                       netns=self.bed.host, env=self.env)
        _wait_for(self.db_sock, "ovsdb-server")
        self.vsctl("--no-wait", "init")
        # veths hand over TSO super-frames with partial checksums: without this OVS's netdev
        # datapath cannot pass TCP with the default offloads on (vnet's passes them whole too)
        self.vsctl("--no-wait", "set", "Open_vSwitch", ".",
                   "other_config:userspace-tso-enable=true")
        self.vswitchd = self.bed.spawn(
            ["ovs-vswitchd", f"unix:{self.db_sock}", f"--unixctl={d}/ovs-vswitchd.ctl",
             f"--pidfile={d}/ovs-vswitchd.pid", f"--log-file={d}/ovs-vswitchd.log",
             "--no-chdir"], netns=self.bed.host, env=self.env)
        _wait_for(d / "ovs-vswitchd.ctl", "ovs-vswitchd")
        self.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev",
                   f"other_config:mac-table-size={mac_table}")
        for port in (self.bed.port_a, self.bed.port_b):
            self.vsctl("add-port", "br0", port)
        run(["ip", "-n", self.bed.host, "link", "set", "br0", "up"], check=False)
        time.sleep(0.5)

    def appctl(self, *args: str) -> str:
        return run(["ovs-appctl", f"--target={self.dir}/ovs-vswitchd.ctl", *args],
                   env=self.env, timeout=600).stdout

    def table_memory(self) -> int:
        return _rss(self.vswitchd.pid) if self.vswitchd else 0

    def table_entries(self) -> int:
        for line in self.appctl("fdb/stats-show", "br0").splitlines():
            if "Current/maximum MAC entries" in line:
                return int(line.split(":")[1].split("/")[0])
        return 0

    def flush_table(self) -> None:
        self.appctl("fdb/flush", "br0")


class Vnet(System):
    """vnet's datapath as shipped: steady unicast flows go to the kernel (kernel flows)."""

    name, label = "vnet", "vnet datapath"
    kernel_flows = "on"

    def __init__(self, bed: Testbed, python: str | None = None) -> None:
        super().__init__(bed)
        self.python = python or sys.executable
        self.control = str(bed.tmp / "datapath.sock")
        self.proc: subprocess.Popen[Any] | None = None

    def call(self, request: protocol.Request) -> Any:
        reply = jsonlines.call(self.control, protocol.to_wire(request), timeout=600)
        try:
            return protocol.result(reply, request.op)
        except DatapathError as err:
            raise BenchError(str(err)) from None

    def start(self, mac_table: int) -> None:
        # another interpreter (PyPy) finds vnet here; the datapath needs nothing else
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        log = open(self.bed.tmp / "datapath.log", "wb")  # noqa: SIM115 - lives with the process
        self.proc = self.bed.spawn([self.python, "-m", "vnet.datapath.main", "--control",
                                    self.control, "--netns", self.bed.host,
                                    "--kernel-flows", self.kernel_flows,
                                    "--log-level", "WARNING"], env=env, stderr=log)
        log.close()
        _wait_for(Path(self.control), "the vnet datapath", self.proc)
        self.call(protocol.AddBridge("bench", (
            VlanOptions(BENCH_VLAN, mac_limit=max(mac_table, DEFAULT_MAC_LIMIT)),)))
        for port in (self.bed.port_a, self.bed.port_b):
            self.call(protocol.AddPort("bench", port, port, "access", vlan=BENCH_VLAN,
                                       kernel_flows=True))

    def stop(self) -> None:
        if self.proc is not None:
            self.bed.stop(self.proc)
            self.proc = None

    def table_memory(self) -> int:
        return _rss(self.proc.pid) if self.proc else 0

    def table_entries(self) -> int:
        return int(self.call(protocol.GetFdbSize("bench")))

    def flush_table(self) -> None:
        self.call(protocol.FlushFdb("bench"))

    def port_losses(self) -> dict[str, int]:
        stats = self.call(protocol.GetStats("bench")).get("bench", {})
        losses: dict[str, int] = {}
        for port in stats.values():
            for reason, count in {**port.get("drops", {}),
                                  "learn-limited": port.get("learn_limited", 0)}.items():
                losses[reason] = losses.get(reason, 0) + int(count)
        return {reason: count for reason, count in losses.items() if count}


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _wait_for(path: Path, what: str, proc: subprocess.Popen[Any] | None = None,
              timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not create {path} within {timeout:.0f} s")
        time.sleep(0.05)


class VnetPython(Vnet):
    """vnet's datapath with kernel flows off: every frame through the Python switch."""

    name, label = "vnet-python", "vnet datapath, every frame in Python"
    kernel_flows = "off"


class VnetPypy(Vnet):
    """vnet's datapath under PyPy (the datapath needs only the standard library)."""

    name, label = "vnet-pypy", "vnet datapath (PyPy)"

    def __init__(self, bed: Testbed, python: str | None = None) -> None:
        super().__init__(bed, python or shutil.which("pypy3"))

    @classmethod
    def available(cls) -> str | None:
        return None if shutil.which("pypy3") else "PyPy is not installed (apt-get install pypy3)"
