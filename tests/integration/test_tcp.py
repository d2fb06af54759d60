"""TCP through the Python switch with the kernel's default offloads (TSO/GSO, checksum) on.

Frames cross the switch as GSO super-frames with partial checksums; without
PACKET_VNET_HDR handling this test fails (corrupt or stalled stream).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import needs_root
from vnet.testing import Lab, popen_in_netns, run_in_netns

pytestmark = [needs_root, pytest.mark.vnet_topology("topologies/pair.yaml")]

SERVER = """
import hashlib, socket, sys
srv = socket.create_server(("10.2.0.2", 5001)); print("ready", flush=True)
conn, _ = srv.accept(); digest = hashlib.sha256(); total = 0
while chunk := conn.recv(1 << 20):
    digest.update(chunk); total += len(chunk)
print(total, digest.hexdigest(), flush=True)
"""
CLIENT = """
import hashlib, os, socket, sys
size = int(sys.argv[1]); block = os.urandom(1 << 20); digest = hashlib.sha256()
with socket.create_connection(("10.2.0.2", 5001), timeout=30) as s:
    for _ in range(size >> 20):
        s.sendall(block); digest.update(block)
print(size, digest.hexdigest(), flush=True)
"""


def offloads(lab: Lab, node: str) -> dict[str, str]:
    out = lab.exec(node, ["ethtool", "-k", "eth0"], check=True).stdout
    return {k.strip(): v.split()[0] for k, v in (line.split(":", 1) for line in out.splitlines()
                                                  if ":" in line and line.split(":", 1)[1].strip())}


def test_tcp_stream_is_intact_with_offloads_on(vnet_lab: Lab) -> None:
    for node in ("left", "right"):
        features = offloads(vnet_lab, node)
        assert features["tcp-segmentation-offload"] == "on", features
        assert features["tx-checksumming"] == "on", features
    server = popen_in_netns(vnet_lab.netns("right"), [sys.executable, "-c", SERVER],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        size = 64 << 20
        sent = run_in_netns(vnet_lab.netns("left"), [sys.executable, "-c", CLIENT, str(size)],
                            check=True, timeout=120).stdout.split()
        received = server.stdout.readline().split()
        assert received == sent, "the stream arrived corrupted or short"
        assert int(received[0]) == size
    finally:
        server.kill()
        server.wait()
    # Super-frames really went through the switch (GSO kept, not segmented by us).
    assert vnet_lab.counters("right:eth0")["tx_bytes"] / vnet_lab.counters(
        "right:eth0")["tx_frames"] > 1500

