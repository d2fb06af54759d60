"""vnet up and vnet down show how far vnetd has got: a line per finished wave on stderr when
stderr is no terminal (a log, CI), the result alone on stdout."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import needs_root
from vnet.bench.bringup import topology
from vnet.testing import TestHost

pytestmark = [needs_root, pytest.mark.root]


def test_up_and_down_print_each_finished_wave(tmp_path: Path) -> None:
    with TestHost() as host:
        path = tmp_path / "five.yaml"
        path.write_text(topology("five", 5))
        up = host.cli("up", str(path))
        assert up.stdout.startswith("lab five: up (created"), up.stdout
        assert up.stderr.splitlines() == ["five: made 1 bridge", "five: made 1 network",
                                          "five: made 5 netns-node", "five: made 5 port"]
        assert "\x1b" not in up.stderr, "no terminal codes where there is no terminal"
        assert host.lab_namespaces("five") == {host.netns_name("five", f"n{i}")
                                               for i in range(5)}
        down = host.cli("down", "--lab", "five")
        assert down.stdout.startswith("lab five: down"), down.stdout
        assert down.stderr.splitlines() == ["five: removed 5 port", "five: removed 5 netns-node",
                                            "five: removed 1 bridge", "five: removed 1 network"]
        assert host.lab_namespaces("five") == set()
