"""``vnet test`` on a live lab: expectations that hold and two that do not (exit code, the
table, JUnit XML parsed back, JSON), and ``vnet graph`` of the live lab with node states.

The lab (topologies/expect.yaml): a and b in red, c in blue on the same subnet, t a trunk
carrying both.  b serves TCP on 8080 (started here); nothing listens on port 9.
"""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import needs_root
from vnet.testing import Lab, TestHost, popen_in_netns, run_in_netns, wait_until

pytestmark = needs_root

TOPOLOGY = Path(__file__).parent / "topologies" / "expect.yaml"
SERVER = ("import socket\n"
          "s = socket.create_server(('0.0.0.0', 8080))\n"
          "while True:\n"
          "    s.accept()[0].close()\n")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with TestHost() as host:
        lab = host.up(TOPOLOGY)
        netns = lab.netns("b")
        server = popen_in_netns(netns, [sys.executable, "-c", SERVER])
        try:
            wait_until(lambda: "0.0.0.0:8080" in run_in_netns(netns, ["ss", "-Htln"]).stdout,
                       30, message="b's server to listen on 8080")
            yield lab
        finally:
            server.kill()
            server.wait()


def test_passing_and_failing_expectations_give_table_junit_and_exit_code(
        lab: Lab, tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    result = lab.host.cli("test", str(TOPOLOGY), "--junit", str(junit), check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    table = [re.split(r"\s{2,}", line) for line in result.stdout.splitlines()[1:9]]
    rows = {cells[0]: cells[1] for cells in table}
    assert rows == {"a -> b ping": "PASS", "a -> c no ping": "PASS", "a -> b tcp/8080": "PASS",
                    "c -> 10.77.0.2 no tcp/8080": "PASS",
                    "t -> a arp vlan 10": "PASS", "t -> 10.77.0.1 no arp vlan 20": "PASS",
                    "c -> a ping": "FAIL", "a -> b tcp/9": "FAIL"}
    assert result.stdout.rstrip().endswith("lab expect: 6 passed, 2 failed")
    assert result.stderr == ""         # not a terminal: no progress line, only the table
    lines = {cells[0]: cells[3] for cells in table}
    assert "1 received" in lines["a -> b ping"]
    assert "(tagged 10)" in lines["t -> a arp vlan 10"]
    assert "no reply within 2 s: " in lines["a -> c no ping"]

    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("8", "2", "0")
    failed = [case.get("name") for case in suite.iter("testcase")
              if case.find("failure") is not None]
    assert failed == ["c -> a ping", "a -> b tcp/9"]


def test_a_terminal_sees_the_expectations_counted(lab: Lab) -> None:
    """stderr on a pseudo-terminal: an updating ``test expect: N/8 expectations checked``
    line, cleared at the end; stdout (a pipe) has the table as ever."""
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "vnet.cli", "--socket", lab.host.socket, "--state-dir",
             lab.host.state_dir, "--netns", lab.host.name, "test", str(TOPOLOGY)],
            stdout=subprocess.PIPE, stderr=terminal, text=True, timeout=120, check=False)
        os.close(terminal)
        terminal = -1
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:          # EIO: the terminal's other end is closed, all read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert done.returncode == 1 and "lab expect: 6 passed, 2 failed" in done.stdout
    counts = re.findall(rb"\r\x1b\[Ktest expect: (\d)/8 expectations checked", shown)
    assert counts == [str(n).encode() for n in range(1, 9)], shown
    assert shown.endswith(b"\r\x1b[K")


def test_a_negative_expectation_waits_its_whole_window(lab: Lab) -> None:
    out = json.loads(lab.host.cli("test", str(TOPOLOGY), "--json", check=False).stdout)
    by_name = {r["expectation"]: r for r in out["results"]}
    assert out["passed"] is False
    silent = by_name["a -> c no ping"]
    assert silent["result"] == "pass" and silent["reply"] is False
    assert silent["seconds"] >= 2.0          # it watched the whole window
    assert by_name["a -> b ping"]["seconds"] < 2.0  # a reply ends a positive check early


def test_an_all_passing_file_exits_zero(lab: Lab, tmp_path: Path) -> None:
    text = TOPOLOGY.read_text()
    passing = tmp_path / "passing.yaml"
    passing.write_text(text[:text.index("  - {from: c, to: a, ping: true")])
    result = lab.host.cli("test", str(passing), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith("lab expect: 6 passed, 0 failed")


def test_a_lab_that_is_not_up_is_named(lab: Lab, tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(TOPOLOGY.read_text().replace("name: expect", "name: notup"))
    result = lab.host.cli("test", str(other), check=False)
    assert result.returncode == 1
    assert result.stderr == f"vnet: lab notup is not up: bring it up with 'vnet up {other}'\n"


def test_the_graph_of_the_live_lab_marks_node_states(lab: Lab, tmp_path: Path) -> None:
    dot = lab.host.cli("graph", "expect").stdout
    for node in ("a", "b", "c", "t"):
        assert f'"node:{node}" [label="{node}\\nnamespace\\n[running]"' in dot
    assert '"node:t" -- "net:blue" [label="eth0 tagged 20"' in dot
    svg = tmp_path / "live.svg"
    lab.host.cli("graph", "expect", "-o", str(svg))
    texts = {t.text for t in ET.parse(svg).getroot().iter("{http://www.w3.org/2000/svg}text")}
    assert {"a", "b", "c", "t", "[running]", "VLAN 10 · isolated"} <= texts

