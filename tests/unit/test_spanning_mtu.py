"""What carries a network that spans hosts gets the overlay's MTU (underlay - 50): a VM's TAP,
the MTU its virtio-net device offers the guest, and a NAT gateway's veth; the gateway's MAC is
derived, so the other hosts place it (pure, no root)."""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

import pytest

from vnet.daemon import naming
from vnet.daemon.resources import (
    GatewayResource,
    VmNodeResource,
    desired_resources,
    from_dict,
    to_dict,
)
from vnet.daemon.vms import VmProcess
from vnet.kvm.runner import parse_nic
from vnet.kvm.virtio.mmio import CONFIG, MmioTransport
from vnet.kvm.virtio.net import F_MAC, F_MTU, VirtioNet
from vnet.topology import load_topology, parse_topology

SPAN = Path(__file__).resolve().parents[2] / "topologies" / "span.yaml"


def test_a_vm_on_a_spanning_network_gets_the_overlays_mtu(tmp_path: Path) -> None:
    t = load_topology(SPAN)
    (v2,) = [r for r in desired_resources(t, "h2", underlay_mtu=1400)
             if isinstance(r, VmNodeResource)]
    assert v2.taps[0].mtu == 1350                      # red spans h1, h2, h3
    assert from_dict(to_dict(v2)) == v2
    nic = VmProcess(v2, tmp_path).command()
    assert nic[nic.index("--nic") + 1].endswith(",mtu=1350")
    assert parse_nic(nic[nic.index("--nic") + 1]).mtu == 1350


def test_a_vm_in_a_lab_without_hosts_keeps_1500(tmp_path: Path) -> None:
    t = parse_topology("name: one\nnetworks: {red: {vlan: 10}}\nnodes:\n"
                       "  v: {kind: vm, nics: [{name: eth0, network: red, ip: 10.0.0.2/24}]}\n")
    (v,) = [r for r in desired_resources(t) if isinstance(r, VmNodeResource)]
    assert v.taps[0].mtu is None
    assert "mtu=" not in VmProcess(v, tmp_path).command()[-1]


def test_the_gateway_of_a_spanning_nat_network_has_the_overlays_mtu_and_a_derived_mac() -> None:
    t = load_topology(SPAN)
    (gateway,) = [r for r in desired_resources(t, "h1") if isinstance(r, GatewayResource)]
    assert gateway.mtu == 1450 and gateway.mac == naming.gateway_mac("span", "inet")
    assert from_dict(to_dict(gateway)) == gateway
    alone = parse_topology("name: one\nnetworks: {inet: {vlan: 30, mode: nat, "
                           "subnet: 192.168.30.0/24}}\nnodes: {}\n")
    (single,) = [r for r in desired_resources(alone) if isinstance(r, GatewayResource)]
    assert single.mtu is None and single.mac is None      # as before: the kernel's


def test_a_gateway_recorded_before_it_had_a_mac_loads_and_is_rebuilt() -> None:
    t = load_topology(SPAN)
    (gateway,) = [r for r in desired_resources(t, "h1") if isinstance(r, GatewayResource)]
    old = {k: v for k, v in to_dict(gateway).items() if k not in ("mac", "mtu")}
    loaded = from_dict(old)
    assert isinstance(loaded, GatewayResource) and loaded.mac is None and loaded != gateway


def test_gateway_macs_are_unicast_locally_administered_and_per_lab_and_network() -> None:
    mac = naming.gateway_mac("span", "inet")
    assert int(mac[:2], 16) == 0x02
    assert len({mac, naming.gateway_mac("span", "wan"), naming.gateway_mac("other", "inet")}) == 3


def test_the_virtio_net_device_offers_the_mtu_it_is_given() -> None:
    plain, small = VirtioNet(-1, "02:00:00:00:00:01"), VirtioNet(-1, "02:00:00:00:00:01", 1450)
    assert not plain.features & F_MTU and plain.features & F_MAC
    assert small.features & F_MTU and small.features & F_MAC
    transport = MmioTransport(small, memoryview(bytearray(4096)), 0xD0000000, lambda: None)
    # virtio_net_config: mac[6], status, max_virtqueue_pairs, mtu (offset 10)
    assert transport.read(0xD0000000 + CONFIG, 6) == bytes.fromhex("020000000001")
    assert struct.unpack("<H", transport.read(0xD0000000 + CONFIG + 10, 2)) == (1450,)
    assert struct.unpack("<H", transport.read(0xD0000000 + CONFIG + 6, 2)) == (1,)  # link up


@pytest.mark.parametrize("text", ["tap=t,mac=02:00:00:00:00:01,mtu=big",
                                  "tap=t,mac=02:00:00:00:00:01,mtu=20"])
def test_the_runner_refuses_a_bad_mtu(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="mtu must be a number of bytes"):
        parse_nic(text)
