"""``vnet up`` to a running vnetd sends the file unread; its progress line names the lab from
the file's top-level ``name:`` line (no root)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vnet.cli import lab_name_in


@pytest.mark.parametrize(("text", "name"), [
    ("name: lab1\nnodes: {}\n", "lab1"),
    ("# a lab\nname: 'my-lab'  # quoted\n", "my-lab"),
    ('nodes:\n  a: {}\nname: "x_2"\n', "x_2"),
    ("nodes:\n  a: {name: other}\n", None),          # not at the top level
    ("{name: lab1, nodes: {}}\n", None),              # flow style: the file's stem instead
    ("name: a\n---\nname: b\n", None),                # two: no guess
    ("name: *anchor\n", None),
])
def test_the_lab_name_is_read_from_a_plain_top_level_line(text: str, name: str | None) -> None:
    assert lab_name_in(text) == name


def test_the_cli_starts_without_importing_the_topology_modules() -> None:
    """vnetd checks the file; the ~0.1 s of imports is paid only where a file is read here."""
    code = ("import sys, vnet.cli as c; c.build_parser(); "
            "print(any(m.startswith('vnet.topology') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
