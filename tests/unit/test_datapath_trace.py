"""The datapath's ``trace`` and ``inject`` requests, on ports that record what they send."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vnet.datapath import protocol
from vnet.datapath.engine import Datapath
from vnet.datapath.ports import Port
from vnet.errors import DatapathError
from vnet.packet import insert_tag, make_tci
from vnet.switch import VlanOptions

A, B = "02:00:00:00:00:01", "02:00:00:00:00:02"


class RecordingPort(Port):
    kind = "recording"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.sock, self.peer = socket.socketpair()
        self.sent: list[bytes] = []

    def drain(self, now: float, budget: int) -> None:
        pass

    def emit(self, hdr: bytes, frame: bytes) -> None:
        self.sent.append(frame)

    def close(self) -> None:
        super().close()
        self.peer.close()


@pytest.fixture
def dp(tmp_path: Path) -> Iterator[Datapath]:
    dp = Datapath(str(tmp_path / "dp.sock"))
    dp.port_type = RecordingPort
    dp.add_bridge(protocol.AddBridge("lab", (VlanOptions(10), VlanOptions(20))))
    dp.add_port(protocol.AddPort("lab", "a.eth0", "vna", "access", vlan=10))
    dp.add_port(protocol.AddPort("lab", "b.eth0", "vnb", "access", vlan=10))
    dp.add_port(protocol.AddPort("lab", "t.eth0", "vnt", "trunk", allowed=(10, 20)))
    try:
        yield dp
    finally:
        dp.close()


def hexframe(dst: str, src: str, tci: int | None = None) -> str:
    frame = bytes.fromhex(dst.replace(":", "") + src.replace(":", "")) + b"\x88\xb5" + bytes(46)
    return (frame if tci is None else insert_tag(frame, tci)).hex()


def sent(dp: Datapath, name: str) -> list[bytes]:
    port = dp.bridges["lab"].ports[name]
    assert isinstance(port, RecordingPort)
    return port.sent


def test_trace_explains_and_changes_nothing(dp: Datapath) -> None:
    before = dp.stats(protocol.GetStats("lab"))
    result = dp.handle(protocol.Trace("lab", "a.eth0", hexframe("ff:ff:ff:ff:ff:ff", A)))
    assert result["vlan"] == 10 and result["drop"] is None
    assert result["egress"] == [{"port": "b.eth0", "tagging": "untagged"},
                                {"port": "t.eth0", "tagging": "tagged"}]
    assert dp.stats(protocol.GetStats("lab")) == before
    assert dp.fdb(protocol.GetFdb("lab")) == []
    assert not sent(dp, "b.eth0")


def test_trace_takes_the_outer_tag_in_band_as_the_port_would(dp: Datapath) -> None:
    result = dp.handle(protocol.Trace("lab", "t.eth0", hexframe(A, B, make_tci(20))))
    assert result["vlan"] == 20 and result["egress"] == []
    result = dp.handle(protocol.Trace("lab", "a.eth0", hexframe(B, A, make_tci(10))))
    assert result["drop"] == "tagged-on-access"


def test_inject_sends_the_frame_where_the_decision_says(dp: Datapath) -> None:
    result = dp.handle(protocol.Inject("lab", "a.eth0", hexframe("ff:ff:ff:ff:ff:ff", A)))
    assert result == {"drop": None, "vlan": 10,
                      "egress": [{"port": "b.eth0", "tagging": "untagged"},
                                 {"port": "t.eth0", "tagging": "tagged"}]}
    assert len(sent(dp, "b.eth0")) == 1 and sent(dp, "t.eth0")[0][12:16] == b"\x81\x00\x00\x0a"
    assert [e["mac"] for e in dp.fdb(protocol.GetFdb("lab"))] == [A]   # it really learned
    # now A is known: a trace from b goes to a only
    result = dp.handle(protocol.Trace("lab", "b.eth0", hexframe(A, B)))
    assert result["egress"] == [{"port": "a.eth0", "tagging": "untagged"}]
    result = dp.handle(protocol.Inject("lab", "t.eth0", hexframe(A, B)))
    assert result["drop"] == "untagged-no-native" and result["egress"] == []
    assert dp.stats(protocol.GetStats("lab"))["lab"]["t.eth0"]["drops"] == {
        "untagged-no-native": 1}


def test_an_unknown_port_says_which_there_are(dp: Datapath) -> None:
    with pytest.raises(DatapathError, match=r"no port 'x\.eth0' \(it has: a\.eth0, b\.eth0, "
                                            r"t\.eth0\)"):
        dp.handle(protocol.Trace("lab", "x.eth0", hexframe(A, B)))
