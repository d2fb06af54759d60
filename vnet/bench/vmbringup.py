"""The VM half of the bring-up bench (``python -m vnet.bench.bringup --vms N``).

A lab of N tiny VMs (``kind: vm, memory: 16M``, as topologies/demo.yaml's vm1) and one
namespace node on one network: the time of ``vnet up``, then until every VM answers a ping
from the namespace node, then of ``vnet down``; and each runner's unique and proportional
memory (USS, PSS from ``/proc/PID/smaps_rollup``: RSS counts the interpreter's pages every
runner shares).  The reference is the kernel work alone, timed in the same sitting: a
shell loop of ``ip`` that makes a TAP per VM and the namespace node's veth on a bridge.
"""

from __future__ import annotations

import secrets
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vnet.bench.bringup import SUBNET, address, all_answer, scratch_namespace, timed
from vnet.daemon import pidfile
from vnet.testing import TestHost

MIB = 1 << 20


def vm_topology(name: str, vms: int) -> str:
    """``vms`` tiny VMs v1..vN and the namespace node n0 on one network."""
    lines = [f"name: {name}", "networks:", "  net: {vlan: 10}", "nodes:",
             f"  n0: {{kind: netns, nics: [{{name: eth0, network: net, ip: {address(0)}/16}}]}}"]
    lines += [f"  v{i}: {{kind: vm, memory: 16M, nics: [{{name: eth0, network: net, "
              f"ip: {address(i)}/16}}]}}" for i in range(1, vms + 1)]
    return "\n".join(lines) + "\n"


def vm_ip_script(host: str, vms: int) -> tuple[str, str]:
    """The kernel work of ``vm_topology``: a bridge, a TAP per VM on it, and the namespace
    node's namespace and veth (all in or named after namespace ``host``)."""
    node = f"{host}-n0"
    up = ["set -e", f"ip -n {host} link add br0 type bridge", f"ip -n {host} link set br0 up",
          f"ip netns add {node}",
          f"ip netns exec {node} sysctl -qw net.ipv6.conf.all.disable_ipv6=1 "
          "net.ipv6.conf.default.disable_ipv6=1",
          f"ip -n {host} link add v0 type veth peer name eth0 netns {node}",
          f"ip -n {node} addr add {address(0)}/16 dev eth0",
          f"ip -n {node} link set lo up; ip -n {node} link set eth0 up",
          f"ip -n {host} link set v0 master br0 up",
          f"for i in $(seq 1 {vms}); do",
          f"  ip -n {host} tuntap add t$i mode tap",
          f"  ip -n {host} link set t$i master br0 up",
          "done"]
    down = [f"for i in $(seq 1 {vms}); do ip -n {host} link del t$i; done",
            f"ip -n {host} link del v0", f"ip netns del {node}", f"ip -n {host} link del br0"]
    return "\n".join(up) + "\n", "\n".join(down) + "\n"


def smaps_rollup(pid: int) -> tuple[int, int]:
    """A process's (USS, PSS) in bytes: its private pages, and its share of every page."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        fields[key] = int(rest.split()[0]) * 1024
    return fields["Private_Clean"] + fields["Private_Dirty"], fields["Pss"]


def runner_pids(state_dir: Path, lab: str) -> list[int]:
    """The lab's runners, from vnetd's pid files."""
    records = (pidfile.read(path) for path in sorted(state_dir.glob(f"runner-{lab}-*.pid")))
    return [record.pid for record in records if record is not None]


@dataclass(frozen=True)
class VmSitting:
    """One repetition's figures: seconds, and bytes per runner."""

    vnet_up: float
    vnet_ping: float          # from the start of ``vnet up`` until every VM answers
    vnet_down: float
    script_up: float
    script_down: float
    uss: tuple[int, ...]
    pss: tuple[int, ...]


def vnet_sitting(vms: int) -> tuple[float, float, float, list[tuple[int, int]]]:
    with TestHost() as host:
        name = f"vm{secrets.token_hex(2)}"
        path = host.workdir / "lab.yaml"
        path.write_text(vm_topology(name, vms))
        node = host.netns_name(name, "n0")
        start = time.perf_counter()
        up = timed(lambda: host.cli("up", str(path)))
        all_answer(lambda i: node, vms + 1, 120)
        ping = time.perf_counter() - start
        memory = [smaps_rollup(pid) for pid in runner_pids(Path(host.state_dir), name)]
        down = timed(lambda: host.cli("down", "--lab", name))
    return up, ping, down, memory


def script_sitting(vms: int) -> tuple[float, float]:
    with scratch_namespace() as host:
        up_script, down_script = vm_ip_script(host, vms)

        def run(script: str) -> None:
            result = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                                    check=False)
            if result.returncode != 0:
                raise RuntimeError(f"the ip script failed: {result.stderr}")

        return timed(lambda: run(up_script)), timed(lambda: run(down_script))


def sit(vms: int) -> VmSitting:
    up, ping, down, memory = vnet_sitting(vms)
    if len(memory) != vms:
        raise RuntimeError(f"found {len(memory)} runners' pid files, not {vms}")
    return VmSitting(up, ping, down, *script_sitting(vms),
                     tuple(u for u, _ in memory), tuple(p for _, p in memory))


def report(sittings: Sequence[VmSitting], vms: int, header: str) -> str:
    def median(values: Sequence[float]) -> float:
        return float(statistics.median(values))

    script_up = median([s.script_up for s in sittings])
    rows = [f"{vms} tiny VMs + 1 namespace node, median of {len(sittings)} ({header})",
            f"{'':24}{'vnet':>10}{'ip script':>12}{'ratio':>8}"]
    for label, values, script in (
            ("up", [s.vnet_up for s in sittings], script_up),
            ("up to all answering", [s.vnet_ping for s in sittings], script_up),
            ("down", [s.vnet_down for s in sittings],
             median([s.script_down for s in sittings]))):
        v = median(values)
        rows.append(f"{label:24}{v:>9.3f}s{script:>11.3f}s{v / script:>7.1f}x")
    for label, field in (("USS", "uss"), ("PSS", "pss")):
        per = [median(getattr(s, field)) / MIB for s in sittings]
        total = [sum(getattr(s, field)) / MIB for s in sittings]
        rows.append(f"runner {label}: {median(per):.1f} MiB median per runner, "
                    f"{median(total):.0f} MiB total")
    return "\n".join(rows) + f"\n(the ip script: {SUBNET}/16, a TAP per VM on a bridge)"
