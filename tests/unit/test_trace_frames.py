"""``vnet trace``'s frames (fields, scapy expressions walked safely) and its text."""

from __future__ import annotations

import pytest
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether

from vnet.cli import build_parser
from vnet.observe.trace import FrameError, frame_from_expression, frame_from_fields, render

NIC = "02:00:00:00:00:01"


def test_fields_build_an_untagged_or_tagged_frame() -> None:
    frame = frame_from_fields("ff:ff:ff:ff:ff:ff", NIC)
    assert len(frame) == 60 and frame[:14] == bytes.fromhex("ffffffffffff020000000001") + \
        b"\x88\xb5"
    tagged = frame_from_fields("02:00:00:00:00:02", NIC, vlan=10, pcp=5, ethertype=0x0800)
    assert tagged[12:18] == b"\x81\x00" + (5 << 13 | 10).to_bytes(2, "big") + b"\x08\x00"
    s_tag = Ether(frame_from_fields("ff:ff:ff:ff:ff:ff", NIC, vlan=10, tpid=0x88A8))
    assert s_tag.haslayer(Dot1AD) and s_tag[Dot1AD].vlan == 10


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"dst": "02:00"}, "six hex octets"),
    ({"vlan": 4096}, r"--vlan must be in 0\.\.4095"),
    ({"pcp": 8, "vlan": 1}, r"--pcp must be in 0\.\.7"),
    ({"pcp": 3}, "give its --vlan too"),
])
def test_bad_fields_are_clear_errors(kwargs: dict[str, object], message: str) -> None:
    args = {"dst": "ff:ff:ff:ff:ff:ff", "src": NIC, **kwargs}
    with pytest.raises(FrameError, match=message):
        frame_from_fields(**args)  # type: ignore[arg-type]


def test_a_scapy_expression_gets_the_nics_source_and_broadcast_by_default() -> None:
    frame = Ether(frame_from_expression("Ether()/Dot1Q(vlan=10)/IP(dst='10.0.0.2')", NIC))
    assert frame.src == NIC and frame.dst == "ff:ff:ff:ff:ff:ff" and frame[Dot1Q].vlan == 10
    frame = Ether(frame_from_expression("Dot1Q(vlan=20, prio=3)/Raw(b'x' * 30)", NIC))
    assert frame.src == NIC and frame[Dot1Q].prio == 3 and bytes(frame).endswith(b"x" * 30)
    explicit = Ether(frame_from_expression("Ether(src='02:00:00:00:00:09', dst='02:00:00:00:"
                                           "00:02')/IP()", NIC))
    assert (explicit.src, explicit.dst) == ("02:00:00:00:00:09", "02:00:00:00:00:02")
    arp = Ether(frame_from_expression("ARP(pdst='10.0.0.2')", NIC))
    assert arp["ARP"].hwsrc == NIC and arp.src == NIC


@pytest.mark.parametrize(("text", "message"), [
    ("__import__('os').system('true')", "is not allowed"),
    ("__import__('os')", "'__import__' is not a scapy layer"),
    ("Ether().__class__", "is not allowed"),
    ("open('/etc/passwd')", "'open' is not a scapy layer"),
    ("Ether(**{'dst': 'x'})", r"no \* or \*\* arguments"),
    ("Ether", "alone is not a frame"),
    ("Ether(nosuch=1)", "scapy refused it"),
    ("Ether(", "not a scapy expression"),
    ("b'x' * 100000", "at most 65535 bytes"),
    ("[1, 2]", "is not a frame"),
    ("(lambda: 1)()", "is not allowed"),
])
def test_anything_but_layers_and_constants_is_refused(text: str, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        frame_from_expression(text, NIC)


def test_the_cli_refuses_an_expression_and_fields_together() -> None:
    from vnet.cli_trace import _frame

    args = build_parser().parse_args(["trace", "a", "Ether()", "--vlan", "10"])
    with pytest.raises(FrameError, match="not both"):
        _frame(args, NIC)
    args = build_parser().parse_args(["trace", "a:eth0", "--tpid", "0x88a8", "--vlan", "10"])
    assert _frame(args, NIC)[12:14] == b"\x88\xa8"


def test_render_shows_each_step_and_the_injection() -> None:
    traced = {"port": "a.eth0", "vlan": 10, "drop": None,
              "egress": [{"port": "b.eth0", "tagging": "untagged"}],
              "steps": [{"stage": "ingress", "outcome": "vlan", "detail": "VLAN 10"},
                        {"stage": "egress", "outcome": "forward", "detail": "out of b.eth0"}]}
    text = render("lab a:eth0", frame_from_fields("ff:ff:ff:ff:ff:ff", NIC), traced,
                  {"drop": "hairpin", "vlan": None, "egress": []})
    lines = text.splitlines()
    assert lines[0] == ("trace lab a:eth0 (port a.eth0): 02:00:00:00:00:01 > "
                         "ff:ff:ff:ff:ff:ff, type 0x88b5 (60 bytes)")
    assert lines[1].split() == ["ingress", "vlan", "VLAN", "10"]
    assert "verdict: forwarded in VLAN 10 to b.eth0 (untagged)" in lines
    assert "injected: dropped (hairpin)" in lines and lines[-1].startswith("note:")


def test_the_frame_line_names_every_tag_and_the_upper_layer() -> None:
    from vnet.observe.trace import describe_frame

    frame = frame_from_expression("Ether(dst='ff:ff:ff:ff:ff:ff')/Dot1AD(vlan=20)/"
                                  "Dot1Q(vlan=10, prio=5)/ARP(pdst='10.0.0.2', psrc='10.0.0.1')",
                                  NIC)
    assert describe_frame(frame) == (
        "02:00:00:00:00:01 > ff:ff:ff:ff:ff:ff, 802.1ad S-tag VID 20, 802.1Q VID 10 PCP 5, "
        "type 0x0806: ARP who has 10.0.0.2 says 10.0.0.1 (50 bytes)")
    assert describe_frame(b"\x00" * 9) == "a runt of 9 bytes"
