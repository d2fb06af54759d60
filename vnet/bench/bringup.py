"""What a lab's bring-up costs against the kernel work it does: ``vnet up`` of N namespace
nodes beside a plain ``ip`` script that makes the same namespaces, veths and addresses.

    python -m vnet.bench.bringup [--nodes 20] [--repeat 3]
    python -m vnet.bench.bringup --vms 20      # tiny VMs instead: vnet/bench/vmbringup.py

Each repetition, on a fresh private host (``vnet.testing.TestHost``): the time of ``vnet up``
(the CLI, as a user runs it), then until every node answers a ping from the first, then of
``vnet down``; and, in a namespace of its own, a shell loop of ``ip`` commands doing the same
kernel work (a namespace per node, IPv6 off, a veth pair with the node's end inside, the
address, links up, the host's end on a Linux bridge, which stands for vnet's switch) and its
removal.  Medians and the ratio to the script of the same sitting, and the CPU: these
machines are shared and not alike, so only the ratio compares across them.  Needs root.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vnet.bench.measure import cpu_model
from vnet.host import netns
from vnet.testing import TestHost, run_in_netns, wait_until

SUBNET = "10.77"


def address(i: int) -> str:
    """Node ``i``'s address: 10.77.H.L/16, so a lab of up to 65 000 nodes fits."""
    return f"{SUBNET}.{(i + 1) // 256}.{(i + 1) % 256}"


def topology(name: str, nodes: int) -> str:
    """A lab of ``nodes`` namespace nodes on one network."""
    lines = [f"name: {name}", "networks:", "  net: {vlan: 10}", "nodes:"]
    lines += [f"  n{i}: {{kind: netns, nics: [{{name: eth0, network: net, "
              f"ip: {address(i)}/16}}]}}" for i in range(nodes)]
    return "\n".join(lines) + "\n"


def ip_script(host: str, nodes: int) -> tuple[str, str]:
    """The shell loops that make and remove what ``topology`` asks for, with ``ip``: the
    bridge and the veths' host ends in namespace ``host``, the nodes' named after it (run
    from the root namespace, whose network it leaves alone: every command names its own)."""
    prefix = host
    up = ["set -e", f"ip -n {host} link add br0 type bridge", f"ip -n {host} link set br0 up",
          f"for i in $(seq 0 {nodes - 1}); do",
          f"  ns={prefix}-n$i; ip netns add $ns",
          "  ip netns exec $ns sysctl -qw net.ipv6.conf.all.disable_ipv6=1 "
          "net.ipv6.conf.default.disable_ipv6=1",
          f"  ip -n {host} link add v$i type veth peer name eth0 netns $ns",
          f"  ip -n $ns addr add {SUBNET}.$(( (i + 1) / 256 )).$(( (i + 1) % 256 ))/16 dev eth0",
          "  ip -n $ns link set lo up; ip -n $ns link set eth0 up",
          f"  ip -n {host} link set v$i master br0 up",
          "done"]
    down = [f"for i in $(seq 0 {nodes - 1}); do ip -n {host} link del v$i; "
            f"ip netns del {prefix}-n$i; done", f"ip -n {host} link del br0"]
    return "\n".join(up) + "\n", "\n".join(down) + "\n"


def all_answer(namespace_of: Callable[[int], str], nodes: int, deadline: float) -> None:
    """Return once every node answers a ping from node 0 (each asked in parallel, again
    until it answers)."""
    def answers(i: int) -> None:
        wait_until(lambda: run_in_netns(namespace_of(0), ["ping", "-c1", "-W1", "-n",
                                                          address(i)]).returncode == 0,
                   deadline, f"n{i} to answer a ping")

    with ThreadPoolExecutor(max_workers=min(32, nodes)) as pool:
        list(pool.map(answers, range(1, nodes)))


@dataclass(frozen=True)
class Sitting:
    """One repetition's figures, in seconds."""

    vnet_up: float
    vnet_ping: float     # from the start of ``vnet up`` until every node answers
    vnet_down: float
    script_up: float
    script_ping: float
    script_down: float


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def vnet_sitting(nodes: int) -> tuple[float, float, float]:
    with TestHost() as host:
        name = f"up{secrets.token_hex(2)}"
        path = host.workdir / "lab.yaml"
        path.write_text(topology(name, nodes))
        start = time.perf_counter()
        up = timed(lambda: host.cli("up", str(path)))
        all_answer(lambda i: host.netns_name(name, f"n{i}"), nodes, 60)
        ping = time.perf_counter() - start
        down = timed(lambda: host.cli("down", "--lab", name))
    return up, ping, down


@contextmanager
def scratch_namespace() -> Iterator[str]:
    name = f"vnb-{secrets.token_hex(3)}"
    netns.create(name)
    try:
        yield name
    finally:
        for leftover in netns.list_names():
            if leftover.startswith(f"{name}-"):
                netns.remove(leftover)
        netns.remove(name)


def script_sitting(nodes: int) -> tuple[float, float, float]:
    with scratch_namespace() as host:
        up_script, down_script = ip_script(host, nodes)

        def run(script: str) -> None:
            result = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                                    check=False)
            if result.returncode != 0:
                raise RuntimeError(f"the ip script failed: {result.stderr}")

        start = time.perf_counter()
        up = timed(lambda: run(up_script))
        all_answer(lambda i: f"{host}-n{i}", nodes, 60)
        ping = time.perf_counter() - start
        down = timed(lambda: run(down_script))
    return up, ping, down


def sit(nodes: int) -> Sitting:
    return Sitting(*vnet_sitting(nodes), *script_sitting(nodes))


def report(sittings: Sequence[Sitting], nodes: int) -> str:
    def median(field: str) -> float:
        return float(statistics.median(getattr(s, field) for s in sittings))

    kernel = Path("/proc/sys/kernel/osrelease").read_text().strip()
    rows = [f"{nodes} namespace nodes, median of {len(sittings)} "
            f"(cpu: {cpu_model()}, kernel {kernel})",
            f"{'':24}{'vnet':>10}{'ip script':>12}{'ratio':>8}"]
    for label, stem in (("up", "up"), ("up to all answering", "ping"), ("down", "down")):
        v, s = median(f"vnet_{stem}"), median(f"script_{stem}")
        rows.append(f"{label:24}{v:>9.3f}s{s:>11.3f}s{v / s:>7.1f}x")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vnet.bench.bringup",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--vms", type=int, default=0,
                        help="instead: a lab of this many tiny VMs and one namespace node "
                        "(vnet/bench/vmbringup.py)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if not 2 <= args.nodes <= 4000:
        parser.error("--nodes: give 2 to 4000")
    if not 0 <= args.vms <= 250:
        parser.error("--vms: give 1 to 250")
    if args.vms:
        return vm_main(args.vms, args.repeat)
    sittings = []
    for i in range(args.repeat):
        sittings.append(sit(args.nodes))
        print(f"sitting {i + 1}: {sittings[-1]}", file=sys.stderr)
    print(report(sittings, args.nodes))
    return 0


def vm_main(vms: int, repeat: int) -> int:
    from vnet.bench import vmbringup  # it imports this module's helpers

    sittings = []
    for i in range(repeat):
        sittings.append(vmbringup.sit(vms))
        print(f"sitting {i + 1}: {sittings[-1]}", file=sys.stderr)
    kernel = Path("/proc/sys/kernel/osrelease").read_text().strip()
    print(vmbringup.report(sittings, vms, f"cpu: {cpu_model()}, kernel {kernel}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
