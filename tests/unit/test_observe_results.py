"""vnet test's pure parts: outcomes and their table, JSON and JUnit XML; the plan of each check
from the live lab's status; ping's evidence and the ARP frames."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest

from vnet.observe import results
from vnet.observe.plan import Probe, plan
from vnet.observe.probes import arp_reply_from, arp_request, ping_command, ping_evidence
from vnet.observe.results import Outcome, failed_to_run, judged
from vnet.packet.ethernet import make_tci, split_outer_tag
from vnet.topology import parse_topology
from vnet.topology.model import Expectation

PING = Expectation("a", "b", "ping")
NO_PING = Expectation("a", "c", "ping", want=False, window=2)
TCP = Expectation("a", "b", "tcp", port=80)


def sample() -> list[Outcome]:
    return [judged(PING, True, 0.01, "1 packets transmitted, 1 received"),
            judged(NO_PING, False, 2.0, "no reply within 2 s"),
            judged(TCP, False, 3.0, "no connection to 10.0.0.2:80 within 3 s"),
            failed_to_run(Expectation("a", "d", "ping"), "node a is missing")]


def test_an_outcome_passes_when_what_happened_is_what_was_wanted() -> None:
    passed, negative, failed, error = sample()
    assert (passed.result, negative.result, failed.result, error.result) == \
        ("PASS", "PASS", "FAIL", "ERROR")
    assert judged(NO_PING, True, 0.1, "a reply").result == "FAIL"  # a reply where none may be
    assert results.summary(sample()) == "2 passed, 1 failed, 1 could not run"


def test_the_exit_code_is_zero_only_when_everything_held() -> None:
    assert results.exit_code(sample()[:2]) == 0
    assert results.exit_code(sample()[:3]) == 1
    assert results.exit_code(sample()[3:]) == 1
    assert results.exit_code([]) == 1


def test_the_table_rows_name_the_expectation_result_time_and_evidence() -> None:
    assert results.table_rows(sample()[:2]) == [
        ["a -> b ping", "PASS", "0.01s", "1 packets transmitted, 1 received"],
        ["a -> c no ping", "PASS", "2.00s", "no reply within 2 s"]]


def test_junit_xml_parses_back_with_failures_and_errors() -> None:
    text = results.junit_xml("demo", sample(), "2026-01-01T00:00:00+00:00")
    root = ET.fromstring(text)
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "1", "1")
    assert suite.get("timestamp") == "2026-01-01T00:00:00+00:00"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["a -> b ping", "a -> c no ping",
                                              "a -> b tcp/80", "a -> d ping"]
    assert [c.find("failure") is not None for c in cases] == [False, False, True, False]
    assert [c.find("error") is not None for c in cases] == [False, False, False, True]
    failure = cases[2].find("failure")
    assert failure is not None
    assert failure.get("message") == "expected a reply: no connection to 10.0.0.2:80 within 3 s"
    assert float(cases[1].get("time") or 0) == pytest.approx(2.0)


def test_json_carries_every_result() -> None:
    out = results.to_json("demo", sample())
    assert out["passed"] is False
    assert [r["result"] for r in out["results"]] == ["pass", "pass", "fail", "error"]
    assert out["results"][1] == {
        "expectation": "a -> c no ping", "from": "a", "to": "c", "check": "ping",
        "port": None, "vlan": None, "want": False, "window": 2, "result": "pass",
        "reply": False, "seconds": 2.0, "evidence": "no reply within 2 s"}


LAB = parse_topology("""
name: x
networks:
  red: {vlan: 10}
  out: {vlan: 30, mode: nat, subnet: 192.168.30.0/24,
        dhcp: {range: [192.168.30.100, 192.168.30.199], leases: {l: 192.168.30.50}}}
nodes:
  a: {kind: netns, nics: [{name: eth0, network: red, ip: 10.0.0.1/24}]}
  t: {kind: netns, nics: [{name: eth1, trunk: [red]}]}
  d: {kind: netns, nics: [{name: eth0, network: out, ip: dhcp}]}
  l: {kind: netns, nics: [{name: eth0, network: out, ip: dhcp}]}
""")


def status(*down: str) -> dict[str, Any]:
    def node(name: str, nic: str, ip: list[str]) -> dict[str, Any]:
        return {"name": name, "kind": "netns", "netns": f"ns-{name}",
                "state": "missing" if name in down else "running",
                "nics": [{"name": nic, "mac": f"02:00:00:00:00:0{len(name)}", "ip": ip}]}
    return {"name": "x", "nodes": [node("a", "eth0", ["10.0.0.1/24"]),
                                   node("t", "eth1", []), node("d", "eth0", ["dhcp"]),
                                   node("l", "eth0", ["dhcp"])]}


def test_a_plan_names_the_namespace_nic_and_address() -> None:
    def nobody(netns: str, nic: str) -> str | None:
        raise AssertionError("a static address needs no live lookup")

    assert plan(Expectation("t", "a", "arp", vlan=10), LAB, status(), nobody) == Probe(
        Expectation("t", "a", "arp", vlan=10), "ns-t", "eth1", "02:00:00:00:00:01",
        "10.0.0.1")
    # a DHCP lease from the file needs no lookup either
    assert plan(Expectation("a", "l", "ping"), LAB, status(), nobody).address == \
        "192.168.30.50"


def test_a_dhcp_address_is_asked_of_the_node_and_a_missing_one_is_explained() -> None:
    asked: list[tuple[str, str]] = []

    def lookup(netns: str, nic: str) -> str | None:
        asked.append((netns, nic))
        return "192.168.30.123" if netns == "ns-d" else None

    assert plan(Expectation("a", "d", "ping"), LAB, status(), lookup).address == \
        "192.168.30.123"
    assert asked == [("ns-d", "eth0")]
    unknown = plan(Expectation("a", "d", "ping"), LAB, status(), lambda ns, nic: None)
    assert unknown.problem == ("no IPv4 address of node d is known (DHCP: is the node up and "
                               "did it get its lease?)")


def test_a_check_from_a_node_that_is_not_running_cannot_run() -> None:
    probe = plan(Expectation("a", "10.0.0.9", "ping", target_is_node=False), LAB,
                 status("a"), lambda ns, nic: None)
    assert probe.problem == "node a is missing: bring the lab up (vnet up FILE) with this file"


def test_ping_stops_at_the_first_reply_and_waits_whole_seconds() -> None:
    probe = Probe(Expectation("a", "b", "ping", window=1.2), "ns-a", "eth0", "", "10.0.0.2")
    assert ping_command(probe) == ["ping", "-n", "-q", "-c", "1", "-i", "0.2", "-w", "2",
                                   "-I", "eth0", "10.0.0.2"]


def test_ping_evidence_is_its_summary_line() -> None:
    output = ("PING 10.0.0.2 (10.0.0.2) from 10.0.0.1 eth0: 56(84) bytes of data.\n\n"
              "--- 10.0.0.2 ping statistics ---\n"
              "1 packets transmitted, 1 received, 0% packet loss, time 0ms\n"
              "rtt min/avg/max/mdev = 0.061/0.061/0.061/0.000 ms\n")
    assert ping_evidence(output) == ("1 packets transmitted, 1 received, 0% packet loss, "
                                     "time 0ms; rtt 0.061 ms")
    assert ping_evidence("ping: connect: Network is unreachable\n") == \
        "ping: connect: Network is unreachable"
    assert ping_evidence("") == "ping said nothing"


def test_the_arp_request_is_a_tagged_probe_and_only_its_reply_counts() -> None:
    frame = arp_request("02:00:00:00:00:01", "10.0.0.2", 10)
    untagged, tci = split_outer_tag(frame)
    assert tci == make_tci(10) and len(untagged) == 60
    assert untagged[:6] == b"\xff" * 6 and untagged[12:14] == b"\x08\x06"
    assert untagged[28:32] == bytes(4)          # sender 0.0.0.0: nobody learns from it
    assert untagged[38:42] == bytes([10, 0, 0, 2])
    assert arp_request("02:00:00:00:00:01", "10.0.0.2", None)[12:14] == b"\x08\x06"
    reply = (bytes.fromhex("020000000001" "020000000002" "0806" "0001" "0800" "06" "04" "0002")
             + bytes.fromhex("020000000002") + bytes([10, 0, 0, 2])
             + bytes.fromhex("020000000001") + bytes(4))
    assert arp_reply_from(reply, make_tci(10), "10.0.0.2") == ("02:00:00:00:00:02", 10)
    assert arp_reply_from(reply, None, "10.0.0.2") == ("02:00:00:00:00:02", None)
    assert arp_reply_from(reply, None, "10.0.0.3") is None          # someone else's
    assert arp_reply_from(untagged, None, "10.0.0.2") is None       # a request, not a reply
