"""Entry point of the datapath process (spawned and supervised by vnetd).

``--lifeline FD`` is a pipe's write end from vnetd: one byte on it says the control socket
listens, and its closing says this process is dying.  It is moved to a high fd number
because the kernel closes a dying process's files from the highest number down: its end
then reaches vnetd before the packet sockets' teardown (about 0.1 s with rings, an RCU grace
period each), so vnetd starts the successor meanwhile.  A vnetd that adopts a running
datapath is not the one that gave it this pipe: it asks for a new lifeline
(``protocol.Lifeline``), which takes the same fd number.

``--standby`` makes a warm spare: the interpreter is up and everything imported, and it waits
for one byte on its stdin before it binds the control socket and starts (EOF: it exits).
vnetd keeps one, so that a restart does not wait for an interpreter to start.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from types import FrameType

from vnet.datapath.control import high_fd
from vnet.datapath.engine import BUSY_POLL, IO_MODES, Datapath
from vnet.errors import HostError
from vnet.host import netns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vnet-datapath",
                                     description="vnet's learning-switch datapath process")
    parser.add_argument("--control", required=True, help="Unix socket path for vnetd's control")
    parser.add_argument("--netns", help="network namespace to run in (default: the current one)")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--io", choices=IO_MODES, default=os.environ.get("VNET_DATAPATH_IO",
                                                                      "ring"),
                        help="ring: PACKET_MMAP rings (default); socket: a system call per "
                             "frame (the reference path)")
    parser.add_argument("--busy-poll-us", type=float,
                        default=float(os.environ.get("VNET_DATAPATH_BUSY_POLL_US",
                                                     BUSY_POLL * 1e6)),
                        help="after forwarding, poll this long before sleeping (0: never)")
    parser.add_argument("--kernel-flows", choices=("on", "off"),
                        default=os.environ.get("VNET_DATAPATH_KERNEL_FLOWS", "on"),
                        help="on: steady unicast flows are handed to the kernel (tc "
                             "redirects) where it can (default); off: every frame through "
                             "Python")
    parser.add_argument("--lifeline", type=int, help="vnetd's pipe (see the module's doc)")
    parser.add_argument("--standby", action="store_true",
                        help="start only when a byte arrives on stdin (see the module's doc)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s datapath %(levelname)s %(message)s")
    lifeline = _raise(args.lifeline) if args.lifeline is not None else None
    try:
        if args.netns:
            netns.enter_for_good(args.netns)
        if args.standby and not os.read(0, 1):
            return 0   # vnetd has no more use for this spare
        datapath = Datapath(args.control, io=args.io,
                            busy_poll=args.busy_poll_us / 1e6,
                            kernel_flows=args.kernel_flows == "on")
    except (HostError, OSError) as err:
        print(f"vnet-datapath: {err}", file=sys.stderr)
        return 1

    def stop(_signum: int, _frame: FrameType | None) -> None:
        datapath.running = False

    if lifeline is not None:
        with contextlib.suppress(OSError):   # vnetd is gone: its PR_SET_PDEATHSIG follows
            os.write(lifeline, b"r")
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    datapath.run()
    return 0


def _raise(fd: int) -> int:
    """``fd`` moved to the highest number the process may use (up to 65535)."""
    high = high_fd()
    if high <= fd:
        return fd
    os.dup2(fd, high, inheritable=False)
    os.close(fd)
    return high


if __name__ == "__main__":
    sys.exit(main())
