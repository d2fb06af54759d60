"""Reading a netdev's frame counts out of a ``/proc/net/dev`` table."""

from __future__ import annotations

from vnet.host.netdev import parse_packets

HEADER = (b"Inter-|   Receive                                                |  Transmit\n"
          b" face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets\n")
TABLE = HEADER + (b"    lo:    6386      58    0    0    0     0          0         0     6386"
                  b"      58    0    0    0     0       0          0\n"
                  b"vnet-sw-t1:1234567 4294967301 0 7 0 0 0 0 10 1 0 0 0 0 0 0\n"
                  b"  t1:      10       2    0    0    0     0          0         0        0"
                  b"       3    0    0    0     0       0          0\n")


def test_the_packets_column_of_the_named_netdev() -> None:
    assert parse_packets(TABLE, "lo") == (58, 58)
    assert parse_packets(TABLE, "vnet-sw-t1") == (4294967301, 1)  # no space after a long name
    assert parse_packets(TABLE, "t1") == (2, 3)                   # not a suffix match


def test_a_netdev_that_is_not_there() -> None:
    assert parse_packets(TABLE, "eth9") is None
    assert parse_packets(b"", "lo") is None
