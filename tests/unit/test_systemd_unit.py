"""systemd/vnetd.service is a valid unit (systemd-analyze verify and security work without
systemd as PID 1), hardened to a score that must not get worse, and still fit for vnetd."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parents[2] / "systemd" / "vnetd.service"
# "systemd-analyze security --offline=yes" (systemd 252): 7.1 before the hardening of
# issue 13, 5.1 after; 5.4 with CAP_SETUID/CAP_SETGID, which vnet exec needs to run a
# command as its caller.  Lower is better; raise it only with a reason in the unit.
MAX_EXPOSURE = 5.4

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="needs systemd-analyze")


def settings() -> list[str]:
    return [line for line in UNIT.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def installed_unit(tmp_path: Path) -> Path:
    vnetd = Path(sys.executable).with_name("vnetd")  # the installed entry point
    unit = tmp_path / "vnetd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/vnetd", str(vnetd)))
    return unit


@needs_systemd_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    result = subprocess.run(["systemd-analyze", "verify", str(installed_unit(tmp_path))],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr   # no warning either


@needs_systemd_analyze
def test_security_exposure_stays_at_most_the_hardened_score(tmp_path: Path) -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                             str(installed_unit(tmp_path))], capture_output=True, text=True)
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, result.stdout


def test_unit_is_a_notify_service_whose_stop_leaves_datapath_and_guests_running() -> None:
    lines = settings()
    # KillMode=process: systemd signals vnetd alone, so the datapath and the VM runners
    # outlive a stop, a crash or a restart and the next vnetd adopts them.
    assert "Type=notify" in lines and "KillMode=process" in lines and "NotifyAccess=main" in lines
    # No mount namespace of its own: namespaces vnetd creates under /run/netns must be
    # visible to the whole host (see docs/architecture.md).
    for option in ("ProtectSystem=", "PrivateTmp=", "ProtectHome=", "ReadWritePaths=",
                   "PrivateDevices=", "PrivateMounts=", "ProtectKernelTunables=",
                   "ProtectKernelModules=", "ProtectKernelLogs=", "ProtectControlGroups=",
                   "ProtectProc=", "ProcSubset=", "RootDirectory=", "MountFlags=",
                   "TemporaryFileSystem=", "BindPaths=", "InaccessiblePaths="):
        assert not any(line.startswith(option) for line in lines), option


def test_unit_keeps_what_vnetd_needs() -> None:
    lines = settings()
    families = next(line for line in lines if line.startswith("RestrictAddressFamilies="))
    for family in ("AF_UNIX", "AF_NETLINK", "AF_PACKET", "AF_INET", "AF_INET6"):
        assert family in families.split("=", 1)[1].split()
    assert {"DeviceAllow=/dev/kvm rw", "DeviceAllow=/dev/net/tun rw"} <= set(lines)
    namespaces = next(line for line in lines if line.startswith("RestrictNamespaces="))
    assert set(namespaces.split("=", 1)[1].split()) == {"net", "mnt"}
    denied = next(line for line in lines if line.startswith("SystemCallFilter="))
    assert denied.startswith("SystemCallFilter=~")
    for needed in ("@mount", "@privileged", "@resources"):   # netns mounts, setns, rlimits
        assert needed not in denied


def test_unit_has_a_watchdog_and_a_reload() -> None:
    lines = settings()
    assert any(re.fullmatch(r"WatchdogSec=[1-9][0-9]*", line) for line in lines)
    assert "ExecReload=/bin/kill -HUP $MAINPID" in lines
