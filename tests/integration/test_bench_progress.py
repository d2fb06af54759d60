"""``vnet bench`` says on stderr which measurement it finished, a plain line each when stderr
is not a terminal, while its report stays on stdout (a short run: the Linux bridge, TCP and
latency, quick settings)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import needs_root

pytestmark = needs_root


def test_a_plain_line_per_finished_measurement_on_stderr(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vnet.cli", "bench", "--quick", "--systems", "bridge",
         "--measure", "tcp,latency", "--seconds", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert [re.sub(r"\(\d+ s\)$", "(N s)", line) for line in lines] == [
        "bench: bridge tcp done 1/2 (N s)", "bench: bridge latency done 2/2 (N s)"], lines
    assert "\x1b" not in done.stderr and "bench:" not in done.stdout
    assert "TCP 2 streams" in done.stdout and "RTT idle" in done.stdout
    figures = json.loads((tmp_path / "results.json").read_text())["summary"]["bridge"]
    assert {"tcp_1_gbps", "rtt_idle_p50_us"} <= set(figures)
