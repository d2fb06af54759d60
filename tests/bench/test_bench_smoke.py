"""The benchmark runs end to end on a tiny setting (the Linux bridge and vnet's datapath).

It is a benchmark, not a test: only that it runs, cleans up and writes its results is
checked here, not any figure.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import needs_root
from vnet.bench import main
from vnet.bench.measure import have_trafgen


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@needs_root
@pytest.mark.root
@pytest.mark.slow
def test_bench_runs_on_a_tiny_setting(tmp_path: Path) -> None:
    before = _namespaces()
    code = main(["--quick", "--seconds", "0.3", "--scale-entries", "500", "--systems",
                 "bridge,vnet", "--out", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert set(result["summary"]) == {"bridge", "vnet"}
    vnet = result["summary"]["vnet"]
    assert vnet["tcp_1_gbps"]["median"] > 0
    assert vnet["tcp_1_gbps"]["ratio"] is not None
    assert vnet["rtt_idle_p50_us"]["median"] > 0
    if have_trafgen():
        assert vnet["frames_delivered_fps"]["median"] > 0
        assert vnet["scale_entries"]["median"] >= 1
    table = (tmp_path / "results.md").read_text()
    assert "| TCP, one stream |" in table
    bringup = result["bringup"]          # --quick: 4 netns nodes; 2 VMs
    assert bringup["netns"]["up"]["vnet"]["median"] > 0
    assert bringup["netns"]["up"]["ratio"] is not None
    assert "4 netns nodes: `vnet up` |" in table
    if Path("/dev/kvm").exists():
        assert bringup["vms"]["ping"]["vnet"]["median"] > 0
        assert bringup["vms"]["memory"]["uss"] > 0
        assert "2 tiny VMs + 1 netns node: runner memory" in table
    # Its own testbed's namespaces (tagged with this process's pid): another bench running
    # beside it on the machine makes namespaces of its own.
    own = f"vb{os.getpid() % 100000}-"
    assert not {n for n in _namespaces() - before if n.startswith(own)}


def test_bench_rejects_an_unknown_system() -> None:
    with pytest.raises(SystemExit):
        main(["--systems", "bridge,hub"])


@needs_root
@pytest.mark.root
@pytest.mark.slow
def test_multihost_bench_runs_on_two_hosts_and_removes_everything(tmp_path: Path) -> None:
    before = _namespaces()
    code = main(["--measure", "multihost", "--hosts", "2", "--quick", "--macs", "100",
                 "--seconds", "0.5", "--out", str(tmp_path)])
    assert code == 0
    figures = json.loads((tmp_path / "results.json").read_text())["multihost"]
    assert figures["reach"]["from_publish_s"]["n"] == 2        # 2 trials x 1 other host
    assert not figures["reach"]["unreached"]
    assert figures["steady"]["per_host_per_s"]["n"] == 2
    assert figures["macs"]["converge_s"]["n"] == 2 and not figures["macs"]["late"]
    assert figures["macs"]["h1_kernel_fdb"] >= 100
    assert figures["overlay"]["vnet"]["tcp_1_gbps"]["median"] > 0
    assert figures["overlay"]["bridge"]["tcp_1_gbps"]["median"] > 0
    assert "new node reachable from every other host" in (tmp_path / "results.md").read_text()
    tag = os.getpid() % 10000     # the bench's own names; a broker's are random (vnb-)
    assert not {n for n in _namespaces() - before
                if n.startswith((f"vmh{tag}-", f"vmr{tag}", "vnb-"))}


def test_bench_rejects_an_unknown_measurement_and_a_bad_host_count() -> None:
    with pytest.raises(SystemExit):
        main(["--measure", "reach,teleport"])
    with pytest.raises(SystemExit):
        main(["--measure", "bringup", "--bringup-nodes", "1"])
    with pytest.raises(SystemExit):
        main(["--measure", "multihost", "--hosts", "1"])
