"""``vnet trace`` in a real lab: for each switch rule, what the trace says is what the frame
then really does, injected (``--inject``) and sent from the node itself, drops included.

Topology ``topologies/switch.yaml``: a1, a2 access in blue (VLAN 10); b1 access in green
(VLAN 20); t1 trunk [blue, green] without native VLAN; t2 trunk [green] with native blue.
The evidence: frames captured in the nodes' namespaces (with their tags as on the wire), and
the in-port's drop counters, waited for.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from scapy.packet import Packet

from tests.conftest import needs_root
from vnet.observe.trace import frame_from_expression
from vnet.testing import Lab, TestHost, wait_until
from vnet.testing.dataplane import DEFAULT_NEGATIVE_TIMEOUT, Dataplane

pytestmark = [needs_root, pytest.mark.vnet_topology("topologies/switch.yaml")]

BCAST = "ff:ff:ff:ff:ff:ff"
ALL = ["a1:eth0", "a2:eth0", "b1:eth0", "t1:eth0", "t2:eth0"]
UNKNOWN = "02:00:00:00:77:77"
_markers = itertools.count()


@pytest.fixture(params=["cpython", "pypy"])
def vnet_host(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
              ) -> Iterator[TestHost]:
    """The datapath under vnetd's CPython and under PyPy: explain runs in the datapath."""
    if request.param == "pypy":
        if shutil.which("pypy3") is None:
            pytest.skip("needs pypy3: apt-get install pypy3 (.ci/install does)")
        monkeypatch.setenv("VNET_DATAPATH_PYTHON", "pypy3")
    with TestHost() as host:
        yield host


def trace(lab: Lab, port: str, expression: str, inject: bool = False) -> dict[str, Any]:
    args = ["trace", "--lab", lab.name, port, expression, "--json"]
    done = lab.host.cli(*args, *(["--inject"] if inject else []))
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def verdict(result: dict[str, Any]) -> tuple[Any, ...]:
    return (result["drop"], result["vlan"],
            sorted((e["port"], e["tagging"]) for e in result["egress"]))


def node_port(datapath_port: str) -> str:
    return datapath_port.replace(".", ":")


def mac(lab: Lab, node: str) -> str:
    return str(lab.host.call("node", node=node, lab=lab.name)["nics"]["eth0"]["mac"])


def drops(lab: Lab, port: str, reason: str) -> int:
    return int(lab.counters(port)["drops"].get(reason, 0))


def carrying(marker: bytes) -> Any:
    return lambda p: bytes(p).endswith(marker)


def seen_as_traced(lab: Lab, port: str, traced: dict[str, Any], marker: bytes) -> None:
    """The frame carrying ``marker`` reaches exactly the traced egress ports, tagged (with
    the traced VLAN) or untagged as traced; or, traced as a drop, none, counted as that."""
    dp: Dataplane = lab.dataplane
    for egress in traced["egress"]:
        got: Packet = dp.receive(node_port(egress["port"]), carrying(marker))
        if egress["tagging"] == "tagged":
            assert got.haslayer("Dot1Q") and got["Dot1Q"].vlan == traced["vlan"], got.summary()
        else:
            assert not got.haslayer("Dot1Q"), got.summary()
    dp.poll(DEFAULT_NEGATIVE_TIMEOUT)  # one window for every other port at once
    for other in ALL:
        stray = [f for f in dp._port(other).queue if f.endswith(marker)]
        assert not stray, f"{other} got a frame the trace did not send there"


def check_rule(lab: Lab, port: str, expression: str, expected: tuple[Any, ...],
               outcome: dict[str, str] | None = None) -> dict[str, Any]:
    """Trace ``expression`` (with a marker payload) from ``port``: the trace must say
    ``expected``; injected, and sent from the node itself, the frame does just that."""
    node = port.split(":")[0]
    lab.dataplane.flush()   # capturing from here on (the first use opens the sockets)
    marker = f"trace-{next(_markers)}".encode()
    framed = f"{expression}/Raw({marker!r})"
    traced = trace(lab, port, framed)
    assert verdict(traced) == expected, traced["steps"]
    for stage, wanted in (outcome or {}).items():
        assert [s["outcome"] for s in traced["steps"] if s["stage"] == stage] == [wanted], \
            traced["steps"]
    before = drops(lab, port, traced["drop"]) if traced["drop"] else 0
    both = trace(lab, port, framed, inject=True)
    assert verdict(both["inject"]) == expected == verdict(both["trace"])
    seen_as_traced(lab, port, traced, marker)
    real = f"trace-{next(_markers)}-real".encode()
    lab.dataplane.send(port, frame_from_expression(f"{expression}/Raw({real!r})",
                                                   mac(lab, node)))
    seen_as_traced(lab, port, traced, real)
    if traced["drop"]:
        wait_until(lambda: drops(lab, port, traced["drop"]) >= before + 2,
                   message=lambda: f"{port} to count 2 more {traced['drop']} drops: "
                                   f"{lab.counters(port)}")
    return traced


def test_each_rule_does_what_its_trace_says(vnet_lab: Lab) -> None:
    lab = vnet_lab
    a1, a2 = mac(lab, "a1"), mac(lab, "a2")
    blue_from_a = [("a2.eth0", "untagged"), ("t1.eth0", "tagged"), ("t2.eth0", "untagged")]
    # broadcast from an access port: its VLAN, to the VLAN's other ports, tagged on t1
    check_rule(lab, "a2:eth0", f"Ether(dst='{BCAST}')", (None, 10, sorted(
        [("a1.eth0", "untagged"), ("t1.eth0", "tagged"), ("t2.eth0", "untagged")])),
        {"lookup": "flood"})
    # unknown unicast floods
    check_rule(lab, "a1:eth0", f"Ether(dst='{UNKNOWN}')", (None, 10, blue_from_a),
               {"lookup": "miss"})
    # known unicast (a2 learned by the broadcast above) goes to its port only
    check_rule(lab, "a1:eth0", f"Ether(dst='{a2}')", (None, 10, [("a2.eth0", "untagged")]),
               {"lookup": "hit"})
    # a tag of an allowed VLAN on a trunk
    check_rule(lab, "t1:eth0", f"Ether(dst='{BCAST}')/Dot1Q(vlan=20)",
               (None, 20, [("b1.eth0", "untagged"), ("t2.eth0", "tagged")]))
    # untagged on a trunk: its native VLAN
    check_rule(lab, "t2:eth0", f"Ether(dst='{BCAST}')", (None, 10, sorted(
        [("a1.eth0", "untagged"), ("a2.eth0", "untagged"), ("t1.eth0", "tagged")])))
    # the drops, each counted under its reason
    check_rule(lab, "t2:eth0", f"Ether(dst='{BCAST}')/Dot1Q(vlan=30)",
               ("vlan-not-allowed", None, []), {"learning": "skipped"})
    check_rule(lab, "t1:eth0", f"Ether(dst='{BCAST}')/Dot1AD(vlan=10)", ("s-tagged", None, []))
    check_rule(lab, "t2:eth0", f"Ether(dst='{BCAST}')/Dot1AD(vlan=20)/Dot1Q(vlan=20)",
               ("s-tagged", None, []))
    check_rule(lab, "a1:eth0", f"Ether(dst='{BCAST}')/Dot1Q(vlan=10)",
               ("tagged-on-access", None, []))
    check_rule(lab, "t1:eth0", f"Ether(dst='{BCAST}')", ("untagged-no-native", None, []))
    check_rule(lab, "a1:eth0", f"Ether(dst='{BCAST}', src='01:00:5e:00:00:01')",
               ("bad-src-mac", None, []))
    check_rule(lab, "a1:eth0", "Ether(dst='01:80:c2:00:00:0e')", ("reserved-group", None, []))
    # to its own source: learned on the in-port, so not sent back out
    check_rule(lab, "a1:eth0", f"Ether(dst='{a1}')", ("hairpin", None, []),
               {"learning": "refresh", "lookup": "hit"})


def test_a_port_at_its_mac_limit_still_forwards(vnet_lab: Lab) -> None:
    """Blue's mac_limit is 64: once a1 has learned 64 MACs, a new source is not learned (the
    trace says so) and its frame is flooded all the same."""
    lab, dp = vnet_lab, vnet_lab.dataplane
    for i in range(64):
        dp.send("a1:eth0", frame_from_expression(f"Ether(src='02:00:00:00:aa:{i:02x}')",
                                                 "02:00:00:00:00:00"))
    wait_until(lambda: sum(e["port"] == "a1.eth0" and e["vlan"] == 10
                           for e in lab.fdb()) >= 64,
               message=lambda: f"a1.eth0 to learn 64 MACs: {lab.fdb()}")
    limited = lab.counters("a1:eth0")["learn_limited"]
    traced = check_rule(lab, "a1:eth0", f"Ether(dst='{BCAST}', src='02:00:00:00:bb:01')",
                        (None, 10, [("a2.eth0", "untagged"), ("t1.eth0", "tagged"),
                                    ("t2.eth0", "untagged")]), {"learning": "limited"})
    assert "limit of 64" in next(s["detail"] for s in traced["steps"]
                                 if s["stage"] == "learning")
    wait_until(lambda: lab.counters("a1:eth0")["learn_limited"] >= limited + 2,
               message=lambda: f"two learn_limited on a1: {lab.counters('a1:eth0')}")
    assert not [e for e in lab.fdb() if e["mac"] == "02:00:00:00:bb:01"]


def test_the_text_and_the_errors(vnet_lab: Lab) -> None:
    host = vnet_lab.host
    before = vnet_lab.counters("a1:eth0")
    text = host.cli("trace", "a1:eth0", "--dst", UNKNOWN).stdout
    lines = text.splitlines()
    assert lines[0] == (f"trace sw a1:eth0 (port a1.eth0): {mac(vnet_lab, 'a1')} > "
                               f"{UNKNOWN}, type 0x88b5 (60 bytes)")
    assert [line.split()[0] for line in lines[1:6]] == ["ingress", "learning", "lookup",
                                                        "cache", "egress"]
    assert lines[-1] == ("verdict: forwarded in VLAN 10 to a2.eth0 (untagged), t2.eth0 "
                         "(untagged), t1.eth0 (tagged)")
    after = vnet_lab.counters("a1:eth0")   # a trace alone changes nothing
    assert (after["rx_frames"], after["drops"]) == (before["rx_frames"], before["drops"])
    bad = host.cli("trace", "a1:eth0", "__import__('os').system('id')", check=False)
    assert bad.returncode == 1 and "is not allowed" in bad.stderr and "Traceback" not in bad.stderr
    bad = host.cli("trace", "a1:eth9", check=False)
    assert bad.returncode == 1 and "no NIC 'eth9' (it has: eth0)" in bad.stderr
    bad = host.cli("trace", "zz:eth0", check=False)
    assert bad.returncode == 1 and "no node 'zz' is up" in bad.stderr
