"""The benchmark: the Linux bridge, Open vSwitch's userspace datapath and vnet's datapath.

``python -m vnet.bench [--quick] [--repeat N] [--systems bridge,ovs,vnet] [--out DIR]``
builds the same two-namespace setup once per system, measures 64-byte frame rates (full
offered rate and RFC 2544 zero-loss), TCP throughput, round-trip latency idle and under load,
and a MAC table of N learned entries, then writes ``results.json``, ``results.md`` and
``results.png`` with every figure's median, spread and ratio to the Linux bridge.
"""

from vnet.bench.run import main

__all__ = ["main"]
