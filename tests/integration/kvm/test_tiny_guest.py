"""Boot the tiny guest on /dev/kvm and read its console."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                                reason="needs /dev/kvm")


def test_tiny_guest_prints_its_command_line_and_exits(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    result = subprocess.run(
        [sys.executable, "-m", "vnet.kvm.runner", "--name", "t1", "--memory", "16M",
         "--cmdline", "mac=02:00:00:00:00:11 ip=10.10.0.11/24", "--console-log",
         str(console)], capture_output=True, text=True, timeout=60,
        env={**os.environ, "VNET_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    assert console.read_text() == (
        "vnet tiny guest 1: cmdline=mac=02:00:00:00:00:11 ip=10.10.0.11/24\n")


def test_runner_refuses_kernels_it_cannot_boot_yet() -> None:
    result = subprocess.run([sys.executable, "-m", "vnet.kvm.runner", "--kernel",
                             "/boot/vmlinuz"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "boots only builtin:tiny" in result.stderr
