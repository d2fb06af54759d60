"""What a client of vnetd needs to know without loading the daemon: where it listens, which
API version it speaks, how long a request may be.

Its own module so that the CLI starts quickly (``vnet up`` is a short-lived process: loading
vnetd's config, access and datapath modules cost it a tenth of a second); the daemon's
modules take these from here.
"""

from __future__ import annotations

DEFAULT_SOCKET = "/run/vnet/vnetd.sock"
DEFAULT_STATE_DIR = "/var/lib/vnet"
API_VERSION = 1          # in every reply; raised when a change would break a client
MAX_REQUEST = 4 << 20    # bytes of one request line (4 MiB)
EXEC_FDS = 3             # an exec's client passes its stdin, stdout and stderr, in that order


def describe_size(size: int) -> str:
    """A size in bytes, in the unit a person would say it in: 4 MiB, 64 KiB, 5.2 MiB."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} bytes"
