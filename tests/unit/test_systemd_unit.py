"""systemd/vnetd.service is a valid unit (systemd-analyze verify works without systemd as PID 1)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parents[2] / "systemd" / "vnetd.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_unit_verifies(tmp_path: Path) -> None:
    vnetd = Path(sys.executable).with_name("vnetd")  # the installed entry point
    unit = tmp_path / "vnetd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/vnetd", str(vnetd)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


def test_unit_is_a_notify_service_that_stops_its_children() -> None:
    text = UNIT.read_text()
    assert "Type=notify" in text and "KillMode=mixed" in text
    # No mount namespace of its own: namespaces vnetd creates under /run/netns must be
    # visible to the whole host (see docs/architecture.md).
    settings = [line for line in text.splitlines() if not line.startswith("#")]
    for option in ("ProtectSystem=", "PrivateTmp=", "ProtectHome=", "ReadWritePaths="):
        assert not any(line.startswith(option) for line in settings), option
