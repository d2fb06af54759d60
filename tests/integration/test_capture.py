"""``vnet capture`` in a real lab: frames sent from the nodes, captured on an access port
and on a trunk port, read back by ``tcpdump -r``: tagged on the trunk, untagged on the
access port, in both directions; ``-c``, Ctrl-C, ``-w -`` into ``tcpdump -r -``, the errors,
and no mirror left behind however the CLI goes.

Topology ``topologies/switch.yaml``: a1, a2 access in blue (VLAN 10); t1 trunk [blue,
green] without native VLAN.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import needs_root
from vnet.observe.trace import frame_from_expression
from vnet.testing import Lab, TestHost, wait_until

pytestmark = [needs_root, pytest.mark.vnet_topology("topologies/switch.yaml"),
              pytest.mark.skipif(shutil.which("tcpdump") is None, reason="needs tcpdump")]

BCAST = "ff:ff:ff:ff:ff:ff"
FROM_A1 = "02:00:00:00:c0:01"   # the sources of the test's frames: their lines in tcpdump's
FROM_T1 = "02:00:00:00:c0:02"
FLOOD = "02:00:00:00:c0:03"


@pytest.fixture(params=["cpython", "pypy"])
def vnet_host(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
              ) -> Iterator[TestHost]:
    """The datapath under vnetd's CPython and under PyPy: the mirrors run in the datapath."""
    if request.param == "pypy":
        if shutil.which("pypy3") is None:
            pytest.skip("needs pypy3: apt-get install pypy3 (.ci/install does)")
        monkeypatch.setenv("VNET_DATAPATH_PYTHON", "pypy3")
    with TestHost() as host:
        yield host


def vnet(lab: Lab, *args: str) -> list[str]:
    host = lab.host
    return [sys.executable, "-m", "vnet.cli", "--socket", host.socket, "--state-dir",
            host.state_dir, "--netns", host.name, *args]


def start(lab: Lab, *args: str, stdout: Any = subprocess.DEVNULL) -> subprocess.Popen[str]:
    """``vnet capture ARGS`` in the background, once it says the mirror is in place."""
    process = subprocess.Popen(vnet(lab, "capture", "--lab", lab.name, *args), text=True,
                               stdout=stdout, stderr=subprocess.PIPE)
    assert process.stderr is not None
    ready, _, _ = select.select([process.stderr], [], [], 60)
    line = process.stderr.readline() if ready else ""
    if "capturing" not in line:
        process.kill()
        raise AssertionError(f"vnet capture did not start: {line}{process.stderr.read()}")
    return process


def finish(process: subprocess.Popen[str]) -> str:
    """The capture's exit (0 asserted) and what it said at the end."""
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return err


def send(lab: Lab, port: str, expression: str, count: int = 1) -> None:
    lab.dataplane.send(port, frame_from_expression(expression, BCAST), count)


def tcpdump(path: Path) -> list[str]:
    """``tcpdump -r FILE -e -nn``: a line per frame (of a file still being written: its
    whole records)."""
    done = subprocess.run(["tcpdump", "-r", str(path), "-e", "-nn"], capture_output=True,
                          text=True)
    return [line for line in done.stdout.splitlines() if not line.startswith("\t")]


def ours(lines: list[str], *sources: str) -> list[str]:
    return [line for line in lines if any(f"{s} > " in line for s in sources)]


def mirrors(lab: Lab, port: str) -> int:
    return int(lab.counters(port).get("mirrors", 0))


def test_access_and_trunk_ports_both_ways_with_tags_as_on_their_wire(
        vnet_lab: Lab, tmp_path: Path) -> None:
    lab = vnet_lab
    access, trunk, trunk_in = tmp_path / "a1.pcap", tmp_path / "t1.pcap", tmp_path / "in.pcap"
    captures = [start(lab, "a1:eth0", "-w", str(access)),
                start(lab, "t1", "-w", str(trunk)),
                start(lab, "t1:eth0", "-w", str(trunk_in), "--direction", "in")]
    assert mirrors(lab, "t1:eth0") == 2 and mirrors(lab, "a1:eth0") == 1
    # a1 sends (in at a1, untagged; out at t1, tagged 10); t1 sends tagged 10 (in at t1,
    # tagged; out at a1, untagged)
    send(lab, "a1:eth0", f"Ether(src='{FROM_A1}', dst='{BCAST}', type=0x88b5)"
                         f"/Raw(b'from a1')")
    send(lab, "t1:eth0", f"Ether(src='{FROM_T1}', dst='{BCAST}')/Dot1Q(vlan=10, type=0x88b5)"
                         f"/Raw(b'from t1')")
    wait_until(lambda: len(ours(tcpdump(trunk), FROM_A1, FROM_T1)) == 2
               and len(ours(tcpdump(access), FROM_A1, FROM_T1)) == 2
               and ours(tcpdump(trunk_in), FROM_T1),
               message=lambda: f"the frames in the captures: {tcpdump(access)} "
                               f"{tcpdump(trunk)} {tcpdump(trunk_in)}")
    for process in captures:
        process.send_signal(signal.SIGINT)           # Ctrl-C: a whole pcap, exit 0
    said = [finish(process) for process in captures]
    assert all("0 frames dropped by the capture" in s for s in said), said

    on_access = ours(tcpdump(access), FROM_A1, FROM_T1)
    assert [line.split()[1] for line in on_access] == [FROM_A1, FROM_T1]
    assert all("vlan" not in line and "ethertype Unknown (0x88b5)" in line
               for line in on_access), on_access
    on_trunk = ours(tcpdump(trunk), FROM_A1, FROM_T1)
    assert [line.split()[1] for line in on_trunk] == [FROM_A1, FROM_T1]
    assert all("ethertype 802.1Q (0x8100)" in line and "vlan 10," in line
               for line in on_trunk), on_trunk
    assert ours(tcpdump(trunk_in), FROM_A1, FROM_T1) == on_trunk[1:]   # only what came in
    wait_until(lambda: mirrors(lab, "t1:eth0") == 0 and mirrors(lab, "a1:eth0") == 0,
               message=lambda: f"the mirrors to go: {lab.counters('t1:eth0')}")


def test_count_stops_and_dash_streams_into_tcpdump(vnet_lab: Lab, tmp_path: Path) -> None:
    lab = vnet_lab
    path = tmp_path / "three.pcap"
    counted = start(lab, "a2:eth0", "-c", "3", "-w", str(path))
    send(lab, "a1:eth0", f"Ether(src='{FLOOD}', dst='{BCAST}', type=0x88b5)/Raw(b'flood')",
         count=10)
    said = finish(counted)
    assert "3 frames captured" in said
    assert len(tcpdump(path)) == 3

    pipe_out, pipe_in = os.pipe()   # vnet capture ... -w - | tcpdump -r - -e -nn
    reader = subprocess.Popen(["tcpdump", "-r", "-", "-e", "-nn"], stdin=pipe_out,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    piped = start(lab, "t1:eth0", "-c", "2", "-w", "-", stdout=pipe_in)
    os.close(pipe_out)
    os.close(pipe_in)
    send(lab, "a1:eth0", f"Ether(src='{FROM_A1}', dst='{BCAST}', type=0x88b5)/Raw(b'piped')",
         count=2)
    finish(piped)
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    lines = [line for line in out.splitlines() if not line.startswith("\t")]
    assert len(lines) == 2 and all("vlan 10," in line for line in lines), lines


def test_the_cli_gone_leaves_no_mirror(vnet_lab: Lab, tmp_path: Path) -> None:
    lab = vnet_lab
    process = start(lab, "a1:eth0", "-w", str(tmp_path / "killed.pcap"))
    assert mirrors(lab, "a1:eth0") == 1
    os.kill(process.pid, signal.SIGKILL)
    process.wait(60)
    wait_until(lambda: mirrors(lab, "a1:eth0") == 0,
               message=lambda: f"a1's mirror to go: {lab.counters('a1:eth0')}")
    send(lab, "a1:eth0", f"Ether(src='{FROM_A1}', dst='{BCAST}', type=0x88b5)/Raw(b'after')")


def test_a_port_that_does_not_exist_says_which_do(vnet_lab: Lab) -> None:
    host = vnet_lab.host
    ports = "a1:eth0 (sw), a2:eth0 (sw), b1:eth0 (sw), t1:eth0 (sw), t2:eth0 (sw)"
    bad = host.cli("capture", "zz:eth0", check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert f"no node 'zz' is up; the ports to capture are: {ports}" in bad.stderr
    bad = host.cli("capture", "a1:eth9", check=False)
    assert bad.returncode == 1
    assert "node a1 has no NIC 'eth9' (it has: eth0)" in bad.stderr
    bad = host.cli("capture", "a1", "-c", "0", check=False)
    assert bad.returncode == 1 and "-c COUNT must be 1 or more" in bad.stderr
