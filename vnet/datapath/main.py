"""Entry point of the datapath process (spawned and supervised by vnetd)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from types import FrameType

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
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s datapath %(levelname)s %(message)s")
    try:
        if args.netns:
            netns.enter_for_good(args.netns)
        datapath = Datapath(args.control, io=args.io,
                            busy_poll=args.busy_poll_us / 1e6)
    except (HostError, OSError) as err:
        print(f"vnet-datapath: {err}", file=sys.stderr)
        return 1

    def stop(_signum: int, _frame: FrameType | None) -> None:
        datapath.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    datapath.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
