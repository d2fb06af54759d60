"""NAT rule generation is pure text: check what it says, and that nft accepts it when there."""

from __future__ import annotations

import shutil
import subprocess
from ipaddress import IPv4Address, IPv4Network

import pytest

from tests.conftest import IS_ROOT
from vnet.daemon.natrules import NatNetwork, PortForward, ruleset, table_name

NET = NatNetwork("inside", IPv4Network("192.168.20.0/24"), "vnaaaa", "eth1",
                 (PortForward("tcp", 2222, IPv4Address("192.168.20.10"), 22),))
OTHER = NatNetwork("other", IPv4Network("192.168.30.0/24"), "vnbbbb", None)


def test_one_table_per_lab() -> None:
    text = ruleset("lab", [NET])
    assert text.startswith(f"table ip {table_name('lab')} {{")
    assert text.count("table ip") == 1


def test_masquerade_out_of_the_uplink_only_for_the_subnet() -> None:
    text = ruleset("lab", [NET])
    assert ('ip saddr 192.168.20.0/24 oifname "eth1" ip daddr != 192.168.20.0/24 masquerade'
            in text)


def test_forward_is_a_dnat_to_the_host_address_plus_a_matching_accept() -> None:
    text = ruleset("lab", [NET])
    assert 'iifname "eth1" fib daddr type local tcp dport 2222 dnat to 192.168.20.10:22' in text
    assert ('iifname "eth1" oifname "vnaaaa" ip daddr 192.168.20.10 tcp dport 22 '
            "ct status dnat accept") in text


def test_everything_else_to_or_from_a_nat_network_is_dropped_after_the_accepts() -> None:
    lines = [line.strip() for line in ruleset("lab", [NET, OTHER]).splitlines()]
    drops = [i for i, line in enumerate(lines) if line.endswith("drop")]
    accepts = [i for i, line in enumerate(lines) if line.endswith("accept") and "policy" not in
               line]
    assert len(drops) == 4 and max(accepts) < min(drops)
    assert 'iifname "vnbbbb" accept' in lines   # no uplink named: any way out


@pytest.mark.skipif(not (IS_ROOT and shutil.which("nft")), reason="needs root and nft")
def test_nft_accepts_the_ruleset() -> None:
    # --check parses and validates against the kernel without applying anything.
    result = subprocess.run(["nft", "--check", "-f", "-"], input=ruleset("lab", [NET, OTHER]),
                            text=True, capture_output=True)
    assert result.returncode == 0, result.stderr
