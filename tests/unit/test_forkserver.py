"""The runners' warm parent: its requests, and a runner it forks, end to end without KVM
(``--help`` and a bad option end a runner before it touches /dev/kvm)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from vnet.daemon import pidfile
from vnet.daemon.runnerparent import RunnerParent
from vnet.daemon.vms import runner_marker
from vnet.kvm.forkserver import parse_request


def test_a_request_is_an_argv_and_a_stderr_path() -> None:
    assert parse_request(b'{"argv": ["--name", "a"], "stderr": "/x.err"}\n') == (
        ["--name", "a"], "/x.err")
    with pytest.raises(ValueError, match="argv must be a list of strings"):
        parse_request(b'{"argv": "--name a", "stderr": "/x.err"}')
    with pytest.raises(ValueError, match="stderr must be a path"):
        parse_request(b'{"argv": []}')


def test_a_forked_runner_is_known_by_the_fork_servers_socket(tmp_path: Path) -> None:
    class Process:
        control_socket = tmp_path / "control-lab-vm.sock"

    forked = pidfile.PidRecord(1, 2, (("marker", "/state/forkserver.sock"),))
    assert runner_marker(forked, Process()) == "/state/forkserver.sock"  # type: ignore[arg-type]
    assert runner_marker(pidfile.PidRecord(1, 2), Process()) == str(  # type: ignore[arg-type]
        Process.control_socket)


def test_the_fork_server_forks_runners_and_reports_how_they_ended(tmp_path: Path) -> None:
    async def run() -> None:
        parent = RunnerParent(tmp_path)
        try:
            helped = await parent.spawn(["--help"], tmp_path / "help.err")
            refused = await parent.spawn(["--memory", "lots"], tmp_path / "bad.err")
            assert helped is not None and refused is not None
            assert helped.pid != refused.pid
            assert await helped.wait() == 0
            assert await refused.wait() == 2    # argparse's status for a bad option
            assert refused.returncode == 2
            assert "not a size: 'lots'" in (tmp_path / "bad.err").read_text()
            assert parent.process is not None and parent.process.returncode is None
        finally:
            await parent.stop()
        assert not parent.socket_path.exists()

    asyncio.run(run())
