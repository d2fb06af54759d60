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


def forward_chain(networks: list[NatNetwork]) -> list[str]:
    lines = [line.strip() for line in ruleset("lab", networks).splitlines()]
    return lines[lines.index("chain forward {") + 2:-2]


def test_everything_else_to_or_from_a_nat_network_is_dropped_after_the_accepts() -> None:
    rules = forward_chain([NET, OTHER])
    assert rules[-4:] == ['iifname "vnaaaa" drop', 'oifname "vnaaaa" drop',
                          'iifname "vnbbbb" drop', 'oifname "vnbbbb" drop']
    assert 'iifname "vnbbbb" accept' in rules   # no uplink named: any way out


def test_two_nat_networks_do_not_reach_each_other_even_with_any_way_out() -> None:
    rules = forward_chain([NET, OTHER])
    between = rules.index('iifname { "vnaaaa", "vnbbbb" } oifname { "vnaaaa", "vnbbbb" } drop')
    assert between < rules.index('iifname "vnbbbb" accept')
    assert between < rules.index('iifname "vnaaaa" oifname "eth1" accept')


def test_reach_lets_one_network_open_connections_to_another_unmasqueraded() -> None:
    reaching = NatNetwork("inside", NET.subnet, "vnaaaa", "eth1", reach=("other",))
    text = ruleset("lab", [reaching, OTHER])
    rules = forward_chain([reaching, OTHER])
    allow = 'iifname "vnaaaa" oifname "vnbbbb" ip daddr 192.168.30.0/24 accept'
    assert rules.index(allow) < rules.index(next(r for r in rules if r.startswith("iifname {")))
    assert not [r for r in rules if r.startswith('iifname "vnbbbb" oifname "vnaaaa"')], \
        "one way: the other network's new connections stay dropped"
    assert 'oifname "vnaaaa" ct state established,related accept' in rules  # the replies
    no_nat = "ip saddr 192.168.20.0/24 ip daddr 192.168.30.0/24 accept"
    assert text.index(no_nat) < text.index("masquerade")


@pytest.mark.skipif(not (IS_ROOT and shutil.which("nft")), reason="needs root and nft")
def test_nft_accepts_the_ruleset() -> None:
    # --check parses and validates against the kernel without applying anything.
    result = subprocess.run(["nft", "--check", "-f", "-"], input=ruleset("lab", [NET, OTHER]),
                            text=True, capture_output=True)
    assert result.returncode == 0, result.stderr
