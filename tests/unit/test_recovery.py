"""What vnetd rebuilds of a lab at its start, given what the kernel still has (pure, no root)."""

from __future__ import annotations

from vnet.daemon import naming
from vnet.daemon.recovery import Rebuild, lives_on, needs, recovery_plan
from vnet.daemon.resources import (
    BridgeResource,
    DhcpLeaseResource,
    DhcpResource,
    GatewayResource,
    NatResource,
    NetnsNodeResource,
    NetworkResource,
    PortResource,
    Resource,
    TapSpec,
    VethSpec,
    VmNodeResource,
)
from vnet.switch import VlanOptions

LAB = "lab"
BRIDGE = BridgeResource(LAB, (VlanOptions(10, 300.0, 1024), VlanOptions(20, 300.0, 1024)))
OFFICE = NetworkResource(LAB, "office", 10, "isolated")
LAN = NetworkResource(LAB, "lan", 30, "bridged", "eth2")


def node(name: str, dhcp: bool = False) -> NetnsNodeResource:
    nic = VethSpec("eth0", naming.host_ifname(LAB, name, "eth0"), "02:00:00:00:00:01",
                   () if dhcp else ("10.0.0.1/24",), naming.owner_alias(LAB, name, "eth0"),
                   dhcp=dhcp)
    return NetnsNodeResource(LAB, name, naming.netns_name(LAB, name), (nic,))


def port(owner: str, nic: str = "eth0", ifname: str | None = None) -> PortResource:
    return PortResource(LAB, naming.port_name(owner, nic),
                        ifname or naming.host_ifname(LAB, owner, nic), "access", vlan=10,
                        node=owner)


A, B, D = node("a"), node("b"), node("d", dhcp=True)
PORT_A, PORT_B, PORT_D = port("a"), port("b"), port("d")
VM = VmNodeResource(LAB, "vm", (TapSpec("eth0", naming.host_ifname(LAB, "vm", "eth0"),
                                        "02:00:00:00:00:09", "10.0.0.9/24",
                                        naming.owner_alias(LAB, "vm", "eth0")),),
                    16 << 20, 1, "builtin:tiny", "", "on-failure")
PORT_VM = port("vm")
GATEWAY = GatewayResource(LAB, "inside", naming.gateway_ifname(LAB, "inside"),
                          naming.gateway_port_ifname(LAB, "inside"), "192.168.20.1/24",
                          naming.gateway_alias(LAB, "inside"))
PORT_GW = PortResource(LAB, naming.gateway_port_name("inside"), GATEWAY.port_ifname, "access",
                       vlan=20, node=GATEWAY.node)
NAT = NatResource(LAB, "table ip vnet-lab {}")
DHCP = DhcpResource(LAB, "inside", GATEWAY.ifname, "192.168.20.1", "192.168.20.0/24",
                    "192.168.20.100", "192.168.20.200", ())
LEASE = DhcpLeaseResource(LAB, "d", D.netns, "eth0")
UPLINK = PortResource(LAB, naming.uplink_port_name("eth2"), "eth2", "access", vlan=30)

RECORD: list[Resource] = [BRIDGE, OFFICE, LAN, GATEWAY, PORT_GW, NAT, DHCP, A, PORT_A, B,
                          PORT_B, D, PORT_D, LEASE, VM, PORT_VM, UPLINK]
KERNEL = [r for r in RECORD if not isinstance(r, BridgeResource | PortResource)]


def rebuilt(recovery_rebuild: tuple[Rebuild, ...]) -> list[Resource]:
    return [step.resource for step in recovery_rebuild]


def test_what_a_port_a_lease_and_a_dhcp_server_need() -> None:
    assert set(needs(PORT_A, RECORD)) == {BRIDGE, A}
    assert set(needs(PORT_VM, RECORD)) == {BRIDGE, VM}
    assert set(needs(PORT_GW, RECORD)) == {BRIDGE, GATEWAY}
    assert needs(UPLINK, RECORD) == (BRIDGE,), "the uplink is the host's: no record names it"
    assert set(needs(LEASE, RECORD)) == {D, PORT_D, DHCP}
    assert needs(DHCP, RECORD) == (GATEWAY,)
    assert needs(A, RECORD) == needs(NAT, RECORD) == needs(BRIDGE, RECORD) == ()


def test_a_lease_lives_on_its_node_not_on_its_port() -> None:
    """A port re-added to a new datapath leaves the address in the node: no new lease."""
    assert lives_on(LEASE, RECORD) == (D,)
    assert set(lives_on(PORT_A, RECORD)) == {BRIDGE, A}


def test_with_everything_there_only_the_new_datapath_is_programmed() -> None:
    """A vnetd restart without a reboot: bridges and ports go into the new datapath, in
    order, and nothing of the kernel's is touched (no lease asked again)."""
    recovery = recovery_plan(RECORD, KERNEL)
    assert rebuilt(recovery.rebuild) == [BRIDGE, PORT_GW, PORT_A, PORT_B, PORT_D, PORT_VM,
                                         UPLINK]
    assert set(recovery.keep) == set(KERNEL)
    assert not any(step.clear for step in recovery.rebuild), "a new datapath has no leftovers"


def test_after_a_reboot_everything_is_rebuilt_in_creation_order() -> None:
    recovery = recovery_plan(RECORD, [OFFICE, LAN])   # networks own nothing: always there
    order = rebuilt(recovery.rebuild)
    assert set(order) == set(RECORD) - {OFFICE, LAN}
    position = {r: i for i, r in enumerate(order)}
    for resource in order:
        assert all(position[n] < position[resource] for n in needs(resource, RECORD)), resource
    assert [s.resource for s in recovery.rebuild if s.clear] == [
        GATEWAY, NAT, DHCP, A, B, D, VM, LEASE], "what may have leftovers is cleared first"


def test_a_vanished_node_is_rebuilt_with_its_lease_and_the_rest_kept() -> None:
    recovery = recovery_plan(RECORD, [r for r in KERNEL if r != D])
    assert [s.resource for s in recovery.rebuild if s.clear] == [D, LEASE]
    assert A in recovery.keep and DHCP in recovery.keep


def test_a_vanished_gateway_takes_its_dnsmasq_along() -> None:
    """dnsmasq listens on the gateway it was started on: a new gateway needs a new one."""
    recovery = recovery_plan(RECORD, [r for r in KERNEL if r != GATEWAY])
    assert [s.resource for s in recovery.rebuild if s.clear] == [GATEWAY, DHCP]
    assert NAT in recovery.keep


def test_each_step_says_what_it_needs() -> None:
    recovery = recovery_plan(RECORD, [])
    step = next(s for s in recovery.rebuild if s.resource == LEASE)
    assert set(step.needs) == {D, PORT_D, DHCP}


def test_unfinished_resources_are_left_alone_and_still_needed() -> None:
    """A pending node (an up that did not finish) is the next up's or down's; its port,
    if recorded ready, is rebuilt with the pending node among what it needs."""
    ready = [r for r in RECORD if r != A]
    recovery = recovery_plan(ready, [r for r in KERNEL if r != A], unfinished=[A])
    assert A not in rebuilt(recovery.rebuild) and A not in recovery.keep
    step = next(s for s in recovery.rebuild if s.resource == PORT_A)
    assert A in step.needs


def test_other_labs_are_not_needed() -> None:
    other = NetnsNodeResource("other", "a", "vnet-other-a", A.nics)
    assert needs(PORT_A, [*RECORD, other, BridgeResource("other", ())]) == needs(PORT_A, RECORD)


def test_an_adopted_datapath_is_given_every_port_again_and_a_port_on_a_new_netdev_is_replaced(
        ) -> None:
    """vnetd adopts the datapath an earlier vnetd left running: each bridge and port is
    given again (the datapath keeps one it holds as recorded), without deleting it first,
    except a port whose node was rebuilt: its socket is on the old netdev."""
    recovery = recovery_plan(RECORD, [r for r in KERNEL if r != A], adopted=True)
    steps = {step.resource: step for step in recovery.rebuild}
    assert {r for r in RECORD if isinstance(r, BridgeResource | PortResource)} <= set(steps)
    assert steps[A].clear
    assert steps[PORT_A].clear, "a port on a rebuilt node must be replaced"
    cleared = {r for r, step in steps.items() if step.clear
               and isinstance(r, BridgeResource | PortResource)}
    assert cleared == {PORT_A}, "a bridge or port that may be right is never dropped"


def test_a_new_datapath_never_deletes_a_port_first() -> None:
    recovery = recovery_plan(RECORD, [r for r in KERNEL if r != A])
    assert not any(step.clear for step in recovery.rebuild
                   if isinstance(step.resource, BridgeResource | PortResource))
