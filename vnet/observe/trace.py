"""``vnet trace``'s two ends in the CLI: the frame to trace, and the trace in words.

A frame is given by fields (``frame_from_fields``: pure bytes, no scapy) or by a scapy
expression (``frame_from_expression``).  The expression is never handed to ``eval``: it is
parsed and walked here, and only scapy layer classes called with constant arguments, ``/``
between them and constants are taken, so ``__import__('os')`` or an attribute access is a
clear error, not code run with vnet's privileges.
"""

from __future__ import annotations

import ast
from typing import Any

from vnet.errors import VnetError
from vnet.packet.ethernet import S_TAG, TAG_ETHERTYPES, mac_to_bytes, mac_to_str

MIN_FRAME = 60          # bytes of a frame built from fields (Ethernet's minimum, without FCS)
MAX_REPEAT = 65535      # bytes b"x" * N may make
LOCAL_EXPERIMENTAL = 0x88B5  # IEEE 802 local experimental EtherType: no node's stack takes it
PAYLOAD = b"vnet trace"


class FrameError(VnetError):
    """A frame that cannot be built from what the user gave; the text says why."""


def frame_from_fields(dst: str, src: str, vlan: int | None = None, pcp: int = 0,
                      tpid: int = 0x8100, ethertype: int = LOCAL_EXPERIMENTAL) -> bytes:
    """An Ethernet frame with one tag (``vlan``; TPID ``tpid``, 0x88a8 for an S-tag) or
    none, padded to 60 bytes."""
    try:
        head = mac_to_bytes(dst) + mac_to_bytes(src)
    except ValueError as err:
        raise FrameError(f"a MAC is six hex octets (02:00:00:aa:bb:cc): {err}") from None
    for what, value, top in (("--vlan", vlan, 4095), ("--pcp", pcp, 7),
                             ("--tpid", tpid, 0xFFFF), ("--ethertype", ethertype, 0xFFFF)):
        if value is not None and not 0 <= value <= top:
            raise FrameError(f"{what} must be in 0..{top}, not {value}")
    if vlan is None and (pcp or tpid != 0x8100):
        raise FrameError("--pcp and --tpid describe a tag: give its --vlan too (0: priority)")
    if vlan is not None:
        head += tpid.to_bytes(2, "big") + (pcp << 13 | vlan).to_bytes(2, "big")
    frame = head + ethertype.to_bytes(2, "big") + PAYLOAD
    return frame + bytes(max(0, MIN_FRAME - len(frame)))


def frame_from_expression(text: str, default_src: str) -> bytes:
    """The frame a scapy expression (``Ether(dst='ff:ff:ff:ff:ff:ff')/Dot1Q(vlan=10)/IP()``)
    describes; an Ethernet header is added if it has none, its source (and an ARP
    sender's hardware address) defaults to ``default_src`` and its destination to
    broadcast."""
    from scapy.layers.l2 import ARP, Ether
    from scapy.packet import Packet

    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise FrameError(f"not a scapy expression: {text!r}: {err.msg}") from None
    layers = _layers()
    try:
        value = _evaluate(tree.body, layers)
    except FrameError as err:
        raise FrameError(f"{text!r}: {err}") from None
    except Exception as err:  # scapy's own refusals: a field it does not have, a bad value
        raise FrameError(f"{text!r}: scapy refused it: {err}") from None
    if isinstance(value, bytes):
        return value
    if not isinstance(value, Packet):
        raise FrameError(f"{text!r} is not a frame (it is {type(value).__name__})")
    if not isinstance(value, Ether):
        value = Ether() / value
    if "src" not in value.fields:
        value.src = default_src
    if "dst" not in value.fields:
        value.dst = "ff:ff:ff:ff:ff:ff"
    arp = value.getlayer(ARP)
    if arp is not None and "hwsrc" not in arp.fields:  # scapy would take this machine's MAC
        arp.hwsrc = default_src
    try:
        return bytes(value)
    except Exception as err:
        raise FrameError(f"{text!r}: scapy cannot build it: {err}") from None


def _layers() -> dict[str, Any]:
    """Every scapy layer class of the usual protocols, by name."""
    import logging

    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
    import scapy.layers.inet
    import scapy.layers.inet6
    import scapy.layers.l2  # noqa: F401 - they register their layers
    from scapy.config import conf

    return {cls.__name__: cls for cls in conf.layers}


ALLOWED = ("scapy layers called with constant arguments (Ether(dst='ff:ff:ff:ff:ff:ff')), "
           "'/' between them, and constants")


def _evaluate(node: ast.expr, layers: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        return _evaluate(node.left, layers) / _evaluate(node.right, layers)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        left, right = _evaluate(node.left, layers), _evaluate(node.right, layers)
        if isinstance(left, str | bytes) and isinstance(right, int) and \
                len(left) * right <= MAX_REPEAT:
            return left * right
        raise FrameError(f"'*' repeats a string or bytes, to at most {MAX_REPEAT} bytes")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _evaluate(node.operand, layers)
        if isinstance(value, int | float):
            return -value
    if isinstance(node, ast.List | ast.Tuple):
        items = [_evaluate(item, layers) for item in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        layer = layers.get(node.func.id)
        if layer is None:
            raise FrameError(f"{node.func.id!r} is not a scapy layer (allowed: {ALLOWED})")
        if any(k.arg is None for k in node.keywords) or any(
                isinstance(a, ast.Starred) for a in node.args):
            raise FrameError(f"no * or ** arguments (allowed: {ALLOWED})")
        args = [_evaluate(a, layers) for a in node.args]
        kwargs = {k.arg: _evaluate(k.value, layers) for k in node.keywords if k.arg}
        return layer(*args, **kwargs)
    if isinstance(node, ast.Name):
        raise FrameError(f"{node.id!r} alone is not a frame: call it, as {node.id}() "
                         f"(allowed: {ALLOWED})")
    raise FrameError(f"{ast.unparse(node)!r} is not allowed (allowed: {ALLOWED})")


# ---- the trace in words -----------------------------------------------------------------------


def describe_frame(frame: bytes) -> str:
    """One line: the addresses, every tag, the EtherType, what scapy makes of the rest (an
    IP or ARP header, say) and the size."""
    if len(frame) < 14:
        return f"a runt of {len(frame)} bytes"
    parts = [f"{mac_to_str(frame[6:12])} > {mac_to_str(frame[0:6])}"]
    offset = 12
    while len(frame) >= offset + 4 and frame[offset:offset + 2] in TAG_ETHERTYPES:
        kind = "802.1ad S-tag" if frame[offset:offset + 2] == S_TAG else "802.1Q"
        tci = int.from_bytes(frame[offset + 2:offset + 4], "big")
        parts.append(f"{kind} VID {tci & 0xFFF}" + (f" PCP {tci >> 13}" if tci >> 13 else ""))
        offset += 4
    ethertype = int.from_bytes(frame[offset:offset + 2], "big")
    parts.append(f"type 0x{ethertype:04x}")
    upper = _upper_summary(frame)
    return ", ".join(parts) + (f": {upper}" if upper else "") + f" ({len(frame)} bytes)"


def _upper_summary(frame: bytes) -> str:
    """scapy's summary of what is above Ethernet and its tags, if it knows the protocol."""
    from scapy.layers.l2 import Dot1Q, Ether
    from scapy.packet import Padding, Raw

    _layers()
    try:
        layer = Ether(frame).payload
        while isinstance(layer, Dot1Q):  # Dot1AD is one too
            layer = layer.payload
        if not layer or isinstance(layer, Raw | Padding):
            return ""
        return str(layer.summary())
    except Exception:  # a frame scapy cannot read: its summary is not worth a traceback
        return ""


def verdict_words(result: dict[str, Any]) -> str:
    """Where a decision (a trace's or an injection's) sends the frame, in one line."""
    if result["drop"]:
        return f"dropped ({result['drop']})"
    if not result["egress"]:
        return f"in VLAN {result['vlan']}, to no port (the VLAN has no other)"
    ports = ", ".join(f"{e['port']} ({e['tagging']})" for e in result["egress"])
    return f"forwarded in VLAN {result['vlan']} to {ports}"


def render(target: str, frame: bytes, trace: dict[str, Any],
           injected: dict[str, Any] | None = None) -> str:
    """The text of ``vnet trace``: the frame, each step, the verdict, and with ``--inject``
    where the frame really went."""
    lines = [f"trace {target} (port {trace['port']}): {describe_frame(frame)}"]
    width = max(len(s["outcome"]) for s in trace["steps"])
    for s in trace["steps"]:
        lines.append(f"  {s['stage']:<9} {s['outcome']:<{width}}  {s['detail']}")
    lines.append(f"verdict: {verdict_words(trace)}")
    if injected is not None:
        lines.append(f"injected: {verdict_words(injected)}")
        if (injected["drop"], injected["egress"]) != (trace["drop"], trace["egress"]):
            lines.append("note: the injection went elsewhere than traced: the tables changed "
                         "in between (a frame learned, an entry aged)")
    return "\n".join(lines)
