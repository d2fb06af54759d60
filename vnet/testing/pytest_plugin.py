"""pytest fixtures for packet tests of vnet labs (registered through the ``pytest11`` entry point).

    @pytest.mark.vnet_topology("topologies/vlans.yaml")
    def test_office_is_isolated_from_lab(vnet_lab):
        dp = vnet_lab.dataplane
        ...

``vnet_lab`` brings the topology up on a fresh private host (namespace + vnetd) and takes it
down afterwards, pass or fail.  When the test fails, the frames every NIC saw are written as
pcap files under ``$VNET_TEST_ARTIFACTS`` (default ``test-artifacts/``), one folder per test.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from vnet.testing.lab import Lab, TestHost

_reports = pytest.StashKey[dict[str, pytest.TestReport]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vnet_topology(path): the topology the vnet_lab fixture "
                            "brings up (relative to the test file's folder or the rootdir)")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    item.stash.setdefault(_reports, {})[report.when] = report
    return report


@pytest.fixture
def vnet_host() -> Iterator[TestHost]:
    """A private host: a fresh network namespace with its own vnetd."""
    with TestHost() as host:
        yield host


@pytest.fixture
def vnet_lab(request: pytest.FixtureRequest, vnet_host: TestHost) -> Iterator[Lab]:
    marker = request.node.get_closest_marker("vnet_topology")
    if marker is None:
        raise pytest.UsageError("vnet_lab needs @pytest.mark.vnet_topology('FILE')")
    path = _find(str(marker.args[0]), request)
    lab = vnet_host.up(path)
    try:
        yield lab
    finally:
        reports = request.node.stash.get(_reports, {})
        if lab._dataplane is not None and any(r.failed for r in reports.values()):
            folder = Path(os.environ.get("VNET_TEST_ARTIFACTS", "test-artifacts"))
            written = lab.dataplane.save_pcaps(folder / re.sub(r"[^\w.-]", "_",
                                                               request.node.nodeid))
            for path_written in written:
                print(f"vnet: kept {path_written}")
        vnet_host.down(lab.name)


def _find(path: str, request: pytest.FixtureRequest) -> Path:
    for base in (Path(str(request.node.fspath)).parent, Path(str(request.config.rootpath))):
        candidate = base / path
        if candidate.exists():
            return candidate
    raise pytest.UsageError(f"topology file {path} not found next to the test or in the rootdir")
