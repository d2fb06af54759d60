"""Packet tests for vnet labs, on scapy, in the vocabulary of p4lang PTF.

    with TestHost() as host:
        lab = host.up("topologies/vlans.yaml")
        dp = lab.dataplane                      # every NIC captured from here on
        dp.send("c1:eth0", Ether(dst=BROADCAST, src=...) / ...)
        dp.verify_packet(expected, "c2:eth0")   # arrives there
        dp.verify_no_packet(expected, "c3:eth0")  # not in another VLAN
        dp.verify_no_other_packets()
        wait_until(lambda: lab.fdb(), message="a learned MAC")  # a condition, never a sleep

The pytest plugin (``vnet.testing.pytest_plugin``) offers the same as fixtures.
"""

from vnet.testing.dataplane import Dataplane
from vnet.testing.lab import (
    Lab,
    TestHost,
    kill_leftovers,
    leftovers,
    popen_in_netns,
    process_alive,
    run_in_netns,
)
from vnet.testing.mask import Mask
from vnet.testing.wait import wait_until

__all__ = ["Dataplane", "Lab", "Mask", "TestHost", "kill_leftovers", "leftovers",
           "popen_in_netns", "process_alive", "run_in_netns", "wait_until"]
