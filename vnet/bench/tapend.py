"""The kernel-only far end of the NIC benchmark: the VM's place on the TAP, without a VM.

``python -m vnet.bench.tapend --tap T --mac M --ip A (--sink | --send MAC)``, run inside the
benchmark's namespace, attaches to the TAP exactly as the VM runner does (the same
``open_tap``: IFF_VNET_HDR, 12-byte headers) and then does the least a far end can do: one
``write`` per frame when sending, one ``read`` (and at most one ``write``) per frame when
sinking, speaking ``vnet.bench.nicframes``.  What the VM path costs beyond this is virtio-net,
the VMM's device thread and the guest.  It runs until it is killed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from vnet.bench.nicframes import DATA, bench_frame, sink_answer
from vnet.kvm.virtio.net import MAX_FRAME, NET_HDR_LEN, open_tap
from vnet.packet.ethernet import mac_to_bytes

HEADER = bytes(NET_HDR_LEN)


def send(fd: int, dst: bytes, mac: bytes, frames: int | None) -> None:
    seq = 0
    while frames is None or seq < frames:
        seq += 1
        with contextlib.suppress(OSError):  # the netdev is down: lost, as the VMM does
            os.write(fd, HEADER + bench_frame(dst, mac, DATA, seq))


def sink(fd: int, mac: bytes, ip: bytes) -> None:
    counted = 0
    while True:
        data = os.read(fd, MAX_FRAME)
        counted, reply = sink_answer(data[NET_HDR_LEN:], mac, ip, counted)
        if reply is not None:
            os.write(fd, HEADER + reply)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vnet.bench.tapend")
    parser.add_argument("--tap", required=True)
    parser.add_argument("--mac", required=True, help="this end's MAC (the guest's)")
    parser.add_argument("--ip", required=True, help="this end's IPv4 address (UDP echo)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--sink", action="store_true")
    mode.add_argument("--send", metavar="MAC", help="send data frames to MAC")
    parser.add_argument("--frames", type=int, help="with --send: this many, then sink")
    args = parser.parse_args(argv)
    try:
        mac = mac_to_bytes(args.mac)
        dst = mac_to_bytes(args.send) if args.send else b""
        ip = bytes(int(part) for part in args.ip.split("."))
        if len(ip) != 4:
            raise ValueError(f"{args.ip!r} is not an IPv4 address")
        fd = open_tap(args.tap)
    except (ValueError, OSError) as err:
        print(f"tapend: {err}", file=sys.stderr)
        return 1
    os.set_blocking(fd, True)
    if args.send:
        send(fd, dst, mac, args.frames)
    if not args.send or args.frames is not None:  # as the guest: after its frames, a sink
        sink(fd, mac, ip)
    return 0


if __name__ == "__main__":
    sys.exit(main())
