"""``vnet trace``: what the switch does with a frame received on a node's NIC, and why.

Registered by ``vnet.cli.build_parser`` (``add_command``).  The frame is built here (from
fields or a scapy expression, ``vnet.observe.trace``), the datapath explains it on its live
tables (``vnet.switch.explain``), and ``--inject`` then really switches it.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from vnet.errors import DaemonError

if TYPE_CHECKING:   # vnet.observe.trace is imported by the command: every vnet command
    # builds the parser, and its imports are ~10 ms
    from vnet.cli import Client

FIELDS = ("dst", "src", "vlan", "pcp", "tpid", "ethertype")


def cmd_trace(client: Client, args: argparse.Namespace) -> int:
    from vnet.observe import trace

    node_name, _, nic = args.target.partition(":")
    node = client.call("node", node=node_name, lab=args.lab)
    nics: dict[str, Any] = node["nics"]
    if not nic:
        if len(nics) != 1:
            raise DaemonError(f"node {node_name} has NICs {', '.join(nics) or 'none'}: say "
                              f"which, as {node_name}:NIC")
        [nic] = nics
    elif nic not in nics:
        raise DaemonError(f"node {node_name} has no NIC {nic!r} (it has: "
                          f"{', '.join(nics) or 'none'})")
    frame = _frame(args, nics[nic]["mac"])
    request = {"node": node_name, "nic": nic, "lab": node["lab"], "frame": frame.hex()}
    explained = client.call("trace", **request)
    injected = client.call("trace", **request, action="inject") if args.inject else None
    if args.json:
        print(json.dumps(explained if injected is None else
                         {"trace": explained, "inject": injected}, indent=2))
    else:
        print(trace.render(f"{node['lab']} {node_name}:{nic}", frame, explained, injected))
    return 0


def _frame(args: argparse.Namespace, nic_mac: str) -> bytes:
    from vnet.observe import trace

    if args.frame is not None:
        given = [f"--{f}" for f in FIELDS if getattr(args, f) is not None]
        if given:
            raise trace.FrameError(f"give the frame as a scapy expression or by fields, not "
                                   f"both ({', '.join(given)} with {args.frame!r})")
        return trace.frame_from_expression(args.frame, nic_mac)
    return trace.frame_from_fields(
        args.dst or "ff:ff:ff:ff:ff:ff", args.src or nic_mac, args.vlan,
        args.pcp or 0, 0x8100 if args.tpid is None else args.tpid,
        trace.LOCAL_EXPERIMENTAL if args.ethertype is None else args.ethertype)


def _number(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r} (0x88a8 or 34984)") from None


def add_command(sub: Any) -> None:
    """Add ``trace`` to the CLI's subcommands."""
    p = sub.add_parser("trace", help="what the switch does with a frame from a NIC, step by "
                       "step, on the live tables (changing nothing; --inject sends it)",
                       description="FRAME is a scapy expression, e.g. \"Ether(dst='ff:ff:ff:"
                       "ff:ff:ff')/Dot1Q(vlan=10)/IP()\"; or give fields (default: broadcast "
                       "from the NIC's MAC, untagged, EtherType 0x88b5).")
    p.add_argument("target", metavar="NODE[:NIC]")
    p.add_argument("frame", nargs="?", metavar="FRAME", help="a scapy expression")
    p.add_argument("--lab", help="the node's lab, when several labs have that node")
    p.add_argument("--dst", metavar="MAC", help="destination (default: broadcast)")
    p.add_argument("--src", metavar="MAC", help="source (default: the NIC's MAC)")
    p.add_argument("--vlan", type=_number, metavar="VID", help="add an 802.1Q tag (0: a "
                   "priority tag)")
    p.add_argument("--pcp", type=_number, metavar="N", help="the tag's priority (0-7)")
    p.add_argument("--tpid", type=_number, metavar="HEX", help="the tag's TPID (default "
                   "0x8100; 0x88a8: an 802.1ad S-tag)")
    p.add_argument("--ethertype", type=_number, metavar="HEX", help="default 0x88b5 (local "
                   "experimental: no node's stack takes it)")
    p.add_argument("--inject", action="store_true", help="then really send it into the "
                   "port, as if received, and show where it went (needs the operator role)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_trace)
