"""The datapath's control protocol: every request round-trips, and malformed input gets an
error that says what is wrong (no root: the codec, and a datapath with no ports)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vnet import jsonlines
from vnet.daemon.supervisor import DatapathSupervisor
from vnet.datapath import protocol
from vnet.datapath.engine import Datapath
from vnet.errors import DatapathError, ProtocolError, VnetError
from vnet.switch import DEFAULT_MAC_AGING, DEFAULT_MAC_LIMIT, VlanOptions
from vnet.topology import Network

EXAMPLES: list[protocol.Request] = [
    protocol.Ping(),
    protocol.AddBridge("lab", (VlanOptions(10), VlanOptions(20, mac_aging=2.5, mac_limit=7))),
    protocol.AddBridge("empty", ()),
    protocol.DelBridge("lab"),
    protocol.AddPort("lab", "c1.eth0", "vn0123456789", "access", vlan=10),
    protocol.AddPort("lab", "r1.eth0", "vnabcdef0123", "trunk", allowed=(10, 20), native=30),
    protocol.DelPort("lab", "c1.eth0"),
    protocol.AddStatic("lab", 10, "02:00:00:aa:bb:cc", "c1.eth0"),
    protocol.GetFdb("lab"),
    protocol.GetFdbSize("lab"),
    protocol.FlushFdb("lab"),
    protocol.GetStats(),
    protocol.GetStats("lab"),
    protocol.Trace("lab", "c1.eth0", "ff" * 6 + "02" * 6 + "88b5"),
    protocol.Inject("lab", "c1.eth0", "ff" * 6 + "02" * 6 + "88b5"),
    protocol.Mirror("lab", "c1.eth0"),
    protocol.Mirror("lab", "t1.eth0", "in"),
    protocol.Shutdown(),
    protocol.Lifeline(),
]


def test_the_examples_cover_every_request() -> None:
    assert {type(m) for m in EXAMPLES} == set(protocol.REQUESTS.values())


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: f"{m.op}")
def test_every_request_round_trips(message: protocol.Request) -> None:
    line = protocol.encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    wire = json.loads(line)
    assert wire["v"] == protocol.VERSION and wire["op"] == message.op
    assert protocol.decode(line) == message


def test_a_vlan_travels_as_the_switchs_own_options_with_the_shared_defaults() -> None:
    decoded = protocol.decode(_line(op="add_bridge", bridge="lab", vlans=[{"vid": 10}]))
    assert decoded == protocol.AddBridge("lab", (VlanOptions(10),))
    assert isinstance(decoded, protocol.AddBridge)
    vlan = decoded.vlans[0]
    assert type(vlan) is VlanOptions
    assert (vlan.mac_aging, vlan.mac_limit) == (DEFAULT_MAC_AGING, DEFAULT_MAC_LIMIT) == (
        300, 1024)
    network = Network("office", 10)            # the topology's defaults are the switch's
    assert (network.mac_aging, network.mac_limit) == (DEFAULT_MAC_AGING, DEFAULT_MAC_LIMIT)


def test_a_port_request_gives_the_switch_its_port_config() -> None:
    request = protocol.AddPort("lab", "r1.eth0", "vn1", "trunk", allowed=(20, 10), native=30)
    config = request.config(7)
    assert (config.number, config.name, config.mode) == (7, "r1.eth0", "trunk")
    assert config.allowed == frozenset({10, 20}) and config.native == 30
    assert config.members == frozenset({10, 20, 30})


def _line(**fields: Any) -> bytes:
    return json.dumps({"v": protocol.VERSION, **fields}).encode()


PORT = {"op": "add_port", "bridge": "b", "name": "n", "ifname": "i", "mode": "access",
        "vlan": 10}

MALFORMED: list[tuple[bytes, str]] = [
    (b"", "not a JSON line"),
    (b"{not json", "not a JSON line"),
    (b"\xff\xfe", "not a JSON line"),
    (b"[" * 100_000, "not a JSON line"),
    (b"[1, 2]", "a message must be a JSON object"),
    (b'"ping"', "a message must be a JSON object"),
    (_line(), "needs an 'op' naming the operation (add_bridge, add_port"),
    (_line(op=7), "needs an 'op'"),
    (_line(op="frobnicate"), "unknown datapath operation 'frobnicate' (known: add_bridge"),
    (b'{"op": "ping"}', "ping: no protocol version ('v'), but this datapath speaks version 1"),
    (json.dumps({"op": "ping", "v": 2}).encode(), "ping: protocol version 2 ('v')"),
    (json.dumps({"op": "ping", "v": "1"}).encode(), 'ping: protocol version "1"'),
    (_line(op="ping", extra=1), "ping: unknown field 'extra' (fields: none)"),
    (_line(op="del_port", bridge="b"), "del_port: missing field 'name'"),
    (_line(op="add_port", bridge="b"), "add_port: missing fields 'name', 'ifname', 'mode'"),
    (_line(**{**PORT, "vlna": 10}), "add_port: unknown field 'vlna' (fields: bridge, name, "
                                   "ifname, mode, vlan, allowed, native, kernel_flows)"),
    (_line(**{**PORT, "vlan": "10"}), 'add_port: vlan must be an integer or null, not "10"'),
    (_line(**{**PORT, "vlan": True}), "add_port: vlan must be an integer or null, not true"),
    (_line(**{**PORT, "vlan": 1.5}), "add_port: vlan must be an integer or null, not 1.5"),
    (_line(**{**PORT, "kernel_flows": 1}), "add_port: kernel_flows must be true or false, not 1"),
    (_line(**{**PORT, "bridge": None}), "add_port: bridge must be a string, not null"),
    (_line(**{**PORT, "vlan": 4095}), "add_port: the VLAN of access port n must be a VLAN ID"),
    (_line(**{**PORT, "vlan": None}), "add_port: access port n needs a VLAN"),
    (_line(**{**PORT, "mode": "hybrid"}), "add_port: port mode must be access or trunk, not "
                                         "'hybrid'"),
    (_line(**{**PORT, "mode": "trunk", "vlan": None, "allowed": "10"}),
     'add_port: allowed must be a list of integers, not "10"'),
    (_line(**{**PORT, "mode": "trunk", "vlan": None, "allowed": [10, "x"]}),
     'add_port: allowed[1] must be an integer, not "x"'),
    (_line(op="add_bridge", bridge="b", vlans={"vid": 10}),
     "add_bridge: vlans must be a list of VLANs, not {"),
    (_line(op="add_bridge", bridge="b", vlans=[10]),
     "add_bridge: vlans[0] must be an object (vid, mac_aging, mac_limit), not 10"),
    (_line(op="add_bridge", bridge="b", vlans=[{"vid": 10}, {"mac_limit": 5}]),
     "add_bridge: vlans[1]: missing field 'vid'"),
    (_line(op="add_bridge", bridge="b", vlans=[{"vid": 10, "aging": 5}]),
     "add_bridge: vlans[0]: unknown field 'aging' (fields: vid, mac_aging, mac_limit)"),
    (_line(op="add_bridge", bridge="b", vlans=[{"vid": 10, "mac_limit": 0}]),
     "add_bridge: vlans[0]: mac_limit must be >= 1, not 0"),
    (_line(op="add_bridge", bridge="b", vlans=[{"vid": 0}]),
     "add_bridge: vlans[0]: a VLAN must be a VLAN ID in 1..4094, not 0"),
    (b'{"v": 1, "op": "add_bridge", "bridge": "b", "vlans": [{"vid": 1, "mac_aging": NaN}]}',
     "add_bridge: vlans[0]: mac_aging must be a finite number, not NaN"),
    (_line(op="add_bridge", bridge="b", vlans=[{"vid": 1, "mac_aging": "300"}]),
     'add_bridge: vlans[0]: mac_aging must be a finite number, not "300"'),
    (_line(op="add_static", bridge="b", vid=10, mac="02:00:00:00:00", port="p"),
     "add_static: mac must be six hex octets (02:00:00:aa:bb:cc), not '02:00:00:00:00'"),
    (_line(op="add_static", bridge="b", vid=5000, mac="02:00:00:00:00:01", port="p"),
     "add_static: vid must be a VLAN ID in 1..4094, not 5000"),
    (_line(op="stats", bridge=["lab"]), 'stats: bridge must be a string or null, not ["lab"]'),
]


@pytest.mark.parametrize(("line", "expected"), MALFORMED, ids=[m[1][:40] for m in MALFORMED])
def test_malformed_requests_say_what_is_wrong(line: bytes, expected: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol.decode(line)
    assert expected in str(caught.value)
    assert "Traceback" not in str(caught.value) and "Errno" not in str(caught.value)
    assert isinstance(caught.value, VnetError)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
                    max_leaves=20)
FIELD_NAMES = st.sampled_from(sorted({f.name for cls in protocol.REQUESTS.values()
                                      for f in dataclasses.fields(cls)} | {"v", "op", "x"}))


@settings(max_examples=400, deadline=None)
@given(op=st.sampled_from(sorted(protocol.REQUESTS)) | st.text(),
       fields=st.dictionaries(FIELD_NAMES, JSON | st.integers(1, 4094) | st.sampled_from(
           ["access", "trunk", "02:00:00:00:00:01"]), max_size=8))
def test_any_json_decodes_to_a_request_or_a_protocol_error(op: str, fields: dict[str, Any]
                                                           ) -> None:
    line = jsonlines.encode({"v": protocol.VERSION, "op": op, **fields})
    try:
        message = protocol.decode(line)
    except ProtocolError as err:
        assert str(err)
    else:
        assert protocol.decode(protocol.encode(message)) == message


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_to_a_request_or_a_protocol_error(line: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        protocol.decode(line)


def test_a_request_is_checked_where_it_is_built() -> None:
    """vnetd learns of a port the switch would refuse before it sends anything."""
    with pytest.raises(ProtocolError, match=r"add_port: trunk port r1\.eth0 carries no VLAN"):
        protocol.AddPort("lab", "r1.eth0", "vn1", "trunk")
    with pytest.raises(ProtocolError, match="add_static: mac must be six hex octets"):
        protocol.AddStatic("lab", 10, "02:00", "p")
    with pytest.raises(ProtocolError, match="trace: frame must be the frame's bytes in hex"):
        protocol.Trace("lab", "p", "not hex")
    with pytest.raises(ProtocolError, match="inject: a frame has 1 to 65535 bytes, not 0"):
        protocol.Inject("lab", "p", "")


def test_a_field_type_without_a_codec_is_refused_at_registration() -> None:
    @dataclasses.dataclass(frozen=True)
    class Odd(protocol.Request):
        when: complex

    protocol.request("odd")(Odd)
    try:
        with pytest.raises(TypeError, match=r"Odd\.when: no wire codec for 'complex'"):
            protocol._check_codecs()
    finally:
        del protocol.REQUESTS["odd"]


def test_replies_decode_to_the_result_or_a_datapath_error() -> None:
    assert protocol.result({"ok": True, "result": {"number": 3}}, "add_port") == {"number": 3}
    with pytest.raises(DatapathError, match="datapath add_port: no bridge 'x'"):
        protocol.result({"ok": False, "error": "no bridge 'x'"}, "add_port")
    with pytest.raises(DatapathError, match="datapath ping: malformed reply"):
        protocol.result([1], "ping")


def test_every_request_has_a_handler(tmp_path: Path) -> None:
    dp = Datapath(str(tmp_path / "dp.sock"))
    try:
        assert set(dp.handlers) == set(protocol.REQUESTS.values())
    finally:
        dp.close()


# ---- a running datapath (its loop in a thread, no ports) --------------------------------------


@pytest.fixture
def running(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "dp.sock")
    dp = Datapath(path)
    loop = threading.Thread(target=dp.run, daemon=True)
    loop.start()
    yield path
    jsonlines.call(path, protocol.to_wire(protocol.Shutdown()), timeout=10)
    loop.join(10)
    assert not loop.is_alive()


def test_a_running_datapath_answers_malformed_lines_and_keeps_serving(running: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(running)
        reader = sock.makefile("rb")
        for line, expected in MALFORMED:
            if b"\n" in line or len(line) > 1000 or not line:
                continue
            sock.sendall(line + b"\n")
            reply = jsonlines.decode(reader.readline())
            assert reply["ok"] is False and expected in reply["error"], (line, reply)
        sock.sendall(protocol.encode(protocol.Ping()))  # the same connection still works
        assert jsonlines.decode(reader.readline())["ok"] is True
    reply = jsonlines.call(running, protocol.to_wire(protocol.AddBridge("lab", ())))
    assert reply == {"ok": True, "result": None}


def test_vnetds_supervisor_speaks_the_protocol(running: str, tmp_path: Path) -> None:
    supervisor = DatapathSupervisor(Path(running), tmp_path / "log", _nothing)

    async def calls() -> None:
        assert (await supervisor.call(protocol.Ping()))["bridges"] == []
        await supervisor.call(protocol.AddBridge("lab", (VlanOptions(10, mac_limit=5),)))
        assert await supervisor.call(protocol.GetFdbSize("lab")) == 0
        assert await supervisor.call(protocol.GetStats()) == {"lab": {}}
        with pytest.raises(DatapathError, match="datapath add_static: bridge 'lab' has no port"):
            await supervisor.call(protocol.AddStatic("lab", 10, "02:00:00:00:00:01", "p"))
        with pytest.raises(DatapathError, match="datapath fdb: no bridge 'nope'"):
            await supervisor.call(protocol.GetFdb("nope"))
        with pytest.raises(DatapathError, match=r"datapath add_port: cannot open port "
                           r"'c1\.eth0' on 'vnet-no-such0': \w") as caught:
            await supervisor.call(protocol.AddPort("lab", "c1.eth0", "vnet-no-such0", "access",
                                                   vlan=10))
        assert "Errno" not in str(caught.value)  # was "[Errno 19] No such device"
        assert await supervisor.call(protocol.GetStats("lab")) == {"lab": {}}

    asyncio.run(calls())


async def _nothing() -> None:
    return None
