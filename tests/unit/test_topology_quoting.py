"""Messages point at a value without echoing it: ``report.quote`` cuts what they quote, in
topology files and in vnetd's config alike; and a file with many problems prints a bounded
number of them, each found without work that grows with the square of the file."""

from __future__ import annotations

import ipaddress
import random
from textwrap import dedent

import pytest

from vnet.daemon.config import ConfigError, parse_config
from vnet.errors import TopologyError
from vnet.topology import parse_topology
from vnet.topology.report import MAX_PROBLEMS, MAX_SUGGESTION_WORK, Reporter, clip, quote

LONG = "x" * 500_000
CUT = "'" + "x" * 60 + "'… (500,000 characters)"


def problems(text: str) -> list[str]:
    with pytest.raises(TopologyError) as info:
        parse_topology(dedent(text).lstrip("\n"), source="t.yaml")
    return info.value.problems


def test_quote_and_clip() -> None:
    assert quote("eth0") == "'eth0'"
    assert quote(LONG) == CUT
    assert clip(LONG) == "x" * 60 + "… (500,000 characters)"
    assert clip("short") == "short"
    assert quote(4094) == "4094"
    assert quote(10**70) == "1" + "0" * 59 + "… (71 digits)"
    assert quote(1 << 20_000) == "an integer of about 6,021 digits"
    assert quote(2.5) == "2.5"
    assert quote(None) == "None"


def test_a_long_name_is_quoted_cut() -> None:
    assert problems(f"name: {LONG}\nnetworks: {{}}\nnodes: {{}}\n") == [
        f"t.yaml:1: name: {CUT} must match ^[a-z][a-z0-9-]{{0,15}}$ (a lower-case letter, then "
        "up to 15 lower-case letters, digits or '-': the lab name is part of kernel object "
        "names)"]


def test_a_long_unknown_key_is_cut_in_the_path_and_the_message() -> None:
    # an explicit key (?): YAML allows implicit keys of at most 1,024 characters
    assert problems(f"name: x\nnetworks: {{}}\nnodes: {{}}\n? {LONG}\n: 1\n") == [
        f"t.yaml:4: {clip(LONG)}: unknown key {CUT} (allowed: bus, expect, hosts, name, networks, "
        "nodes, version)"]


@pytest.mark.parametrize("where", [
    "networks: {{a: {{vlan: 1, mode: {v}}}}}\nnodes: {{}}",
    "networks: {{a: {{vlan: 1, mode: nat, subnet: {v}}}}}\nnodes: {{}}",
    "networks: {{a: {{vlan: 1}}}}\nnodes: {{n: {{kind: netns, nics: [{{name: e0, network: a, "
    "mac: {v}}}]}}}}",
    "networks: {{a: {{vlan: 1}}}}\nnodes: {{n: {{kind: netns, nics: [{{name: e0, network: a, "
    "ip: {v}}}]}}}}",
    "networks: {{a: {{vlan: 1}}}}\nnodes: {{n: {{kind: netns, nics: [{{name: e0, network: {v}}}"
    "]}}}}",
    "networks: {{a: {{vlan: 1}}}}\nnodes: {{n: {{kind: vm, memory: {v}}}}}",
    "networks: {{{v}: {{vlan: 1}}}}\nnodes: {{}}",
    "networks: {{a: {{vlan: 1, mode: nat, subnet: 10.0.0.0/24, dhcp: {{range: [{v}, {v}]}}}}}}"
    "\nnodes: {{}}",
    "networks: {{}}\nnodes: {{}}\nhosts: {{h: {{address: {v}}}}}",
    "networks: {{}}\nnodes: {{}}\nbus: {{broker: 'mqtt://{v}'}}",
    "networks: {{a: {{vlan: {v}}}}}\nnodes: {{}}",
])
def test_no_message_echoes_a_long_value(where: str) -> None:
    for value in (LONG, "9" * 4000, "a-" * 200_000 + "1", f'"{LONG}:1"', "0x" + "f" * 200_000):
        try:
            parse_topology("name: x\n" + where.format(v=value) + "\n", source="t.yaml")
            found: list[str] = []  # a VM may ask for 10**3999 bytes: not this test's business
        except TopologyError as err:
            found = err.problems
        for problem in found:
            assert len(problem) < 400, problem[:500]


def test_a_long_config_value_is_quoted_cut() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"bus: {{broker: 'mqtt://{LONG}'}}\nhost: {LONG}\n", "c.yaml",
                     hostname="h1")
    assert info.value.problems == [
        f"c.yaml:1: bus.broker: {CUT} is not a host name or IP address (e.g. "
        "mqtt://broker.example:1883)",
        f"c.yaml:2: host: {CUT} must match ^[A-Za-z0-9][A-Za-z0-9_.-]{{0,62}}$ (a letter or "
        "digit, then up to 62 letters, digits, '_', '.' or '-')"]


def test_many_problems_print_the_first_hundred_and_a_count() -> None:
    lines = ["name: x", "networks: {}", "nodes: {}"] + [f"k{i}: 1" for i in range(150)]
    found = problems("\n".join(lines) + "\n")
    assert len(found) == MAX_PROBLEMS + 1
    assert found[0].startswith("t.yaml:4: k0: unknown key 'k0'")
    assert found[MAX_PROBLEMS - 1].startswith("t.yaml:103: k99: unknown key 'k99'")
    assert found[-1] == "t.yaml: and 50 more problems after these: fix these first"


def test_the_same_problem_through_many_aliases_is_reported_once() -> None:
    lines = ["name: x", "networks: {}", "nodes: {}", "x-bad: &bad [!custom 1]"]
    lines += [f"x{i}: *bad" for i in range(20)]
    found = problems("\n".join(lines) + "\n")
    assert sum("could not determine a constructor" in p for p in found) == 21  # one per path
    rep = Reporter("t.yaml")
    rep.at(4, (), "same")
    rep.at(4, (), "same")
    assert rep.problems == ["t.yaml:4: same"]


def test_did_you_mean_has_a_budget() -> None:
    """Near misses are looked up until MAX_SUGGESTION_WORK names have been compared; then
    messages go without: 4,000 networks and 50 undefined names allow 12 look-ups."""
    nets = "".join(f"  net{i}: {{vlan: {i + 1}}}\n" for i in range(4000))
    nodes = "".join(f"  c{i}: {{kind: netns, nics: [{{name: e0, network: nett{i}}}]}}\n"
                    for i in range(50))
    found = problems(f"name: x\nnetworks:\n{nets}nodes:\n{nodes}")
    assert len(found) == 50
    assert found[0] == ("t.yaml:4004: nodes.c0.nics[0].network: network 'nett0' is not defined "
                        "(defined: net0, net1, net10, net100, net1000, net1001, net1002, "
                        "net1003, net1004, net1005, … (4,000 in all)); did you mean 'net0'?")
    suggested = [p for p in found if "did you mean" in p]
    assert len(suggested) == MAX_SUGGESTION_WORK // 4000


def test_subnet_overlaps_are_those_of_every_pair() -> None:
    """The sweep that replaced the comparison of every pair finds the same networks, each
    named with an earlier network it overlaps."""
    rng = random.Random(16)
    for _ in range(200):
        subnets = []
        for _ in range(rng.randint(2, 12)):
            length = rng.randint(8, 30)
            address = rng.choice([0x0A000000, 0x0A010000]) | rng.getrandbits(12) << rng.randint(
                0, 12)
            subnets.append(ipaddress.IPv4Network(
                (address & (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF, length)))
        text = "name: x\nnetworks:\n" + "".join(
            f"  n{i}: {{vlan: {i + 1}, subnet: {s}}}\n" for i, s in enumerate(subnets))
        expected = {i for i, s in enumerate(subnets) if any(s.overlaps(t) for t in subnets[:i])}
        try:
            parse_topology(text + "nodes: {}\n")
            found: list[str] = []
        except TopologyError as err:
            found = err.problems
        reported = set()
        for problem in found:
            i = int(problem.split("networks.n")[1].split(".")[0])
            other = int(problem.split("of network 'n")[1].rstrip("'"))
            assert other < i and subnets[i].overlaps(subnets[other]), problem
            reported.add(i)
        assert reported == expected, subnets


def test_a_config_path_is_shown_whole_up_to_200_characters_then_cut() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("socket: /run/" + "s" * 5000 + "\n", "c.yaml", hostname="h1")
    assert info.value.problems == [
        "c.yaml:1: socket: /run/" + "s" * 195 + "… (5,005 characters) is 5005 bytes long: a "
        "Unix socket path has at most 107; choose a shorter one"]
