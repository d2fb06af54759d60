"""``run_all`` tells its caller each time one more expectation is checked (``vnet test``'s
progress line), from the calling thread, whether the check ran or could not (no root)."""

from __future__ import annotations

import threading

from vnet.observe.plan import Probe
from vnet.observe.probes import run_all
from vnet.topology.model import Expectation


def test_every_outcome_is_counted_once_in_the_callers_thread() -> None:
    probes = [Probe(Expectation("a", "b", "ping"), problem="node a is not up"),
              Probe(Expectation("a", "c", "tcp", port=80), netns="vnet-no-such-netns-x",
                    address="10.0.0.1"),
              Probe(Expectation("b", "a", "arp"), problem="node b has no NIC")]
    seen: list[tuple[int, int, str]] = []
    outcomes = run_all(probes, lambda done, total: seen.append(
        (done, total, threading.current_thread().name)))
    assert [(done, total) for done, total, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    assert {name for *_, name in seen} == {threading.current_thread().name}
    assert [o.result for o in outcomes] == ["ERROR", "ERROR", "ERROR"]
    assert "vnet-no-such-netns-x" in outcomes[1].evidence
