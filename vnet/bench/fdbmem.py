"""The switch core's MAC table at scale, without a datapath: bytes per entry and rates.

``python -m vnet.bench.fdbmem [N]`` learns N distinct source MACs (default 1 000 000) through
``Switch.receive``, as a sweep does, and reports:

* bytes per entry: what ``tracemalloc`` saw allocated by the table (the FDB and the switch's
  caches) over N, so interpreter and frame buffers are not counted;
* new-source decisions per second (every frame a MAC the switch has not seen: RFC 2889's
  learning path), lookups per second (frames to the N learned MACs, a decision each), and
  ``Fdb.lookup`` calls per second at N entries against a table of 1 000 (O(1): the two
  should be close);
* the expiry of all N entries (aging still works at this size).

Frames are built beforehand; time is the process's ``perf_counter``.
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc

from vnet.switch import Switch
from vnet.switch.ports import PortConfig, VlanOptions

VID = 10
MAC_B = bytes.fromhex("02000000000b")
TAIL = bytes.fromhex("0800") + bytes(46)  # an IPv4 ethertype and padding to 60 bytes


def sweep_macs(n: int) -> list[bytes]:
    """N distinct unicast, locally administered source MACs (02:c0:xx:xx:xx:xx)."""
    return [b"\x02\xc0" + i.to_bytes(4, "big") for i in range(n)]


def switch(n: int) -> Switch:
    sw = Switch()
    sw.add_vlan(VlanOptions(VID, mac_aging=300, mac_limit=n + 64))
    sw.add_port(PortConfig(1, "a", "access", vlan=VID))
    sw.add_port(PortConfig(2, "b", "access", vlan=VID))
    return sw


def measure(n: int) -> dict[str, float]:
    macs = sweep_macs(n)
    learn_frames = [MAC_B + m + TAIL for m in macs]
    lookup_frames = [m + MAC_B + TAIL for m in macs]
    sw = switch(n)  # the rate, untraced (tracemalloc slows every allocation)
    sw.receive(2, bytes(6) + MAC_B + TAIL, None, 0.0)  # B is known (as after the warm-up)
    receive = sw.receive
    t0 = time.perf_counter()
    for frame in learn_frames:
        receive(1, frame, None, 1.0)
    learn_s = time.perf_counter() - t0
    del sw, receive
    sw = switch(n)  # the memory, traced
    sw.receive(2, bytes(6) + MAC_B + TAIL, None, 0.0)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for frame in learn_frames:
        sw.receive(1, frame, None, 1.0)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    receive = sw.receive
    entries = len(sw.fdb)
    t0 = time.perf_counter()
    for frame in lookup_frames:
        receive(2, frame, None, 2.0)
    lookup_s = time.perf_counter() - t0
    return {"entries": entries, "bytes_per_entry": (after - before) / max(entries, 1),
            "learn_fps": n / learn_s, "decision_fps": n / lookup_s,
            "fdb_lookup_ns": _lookup_ns(sw, macs), "fdb_lookup_ns_small": _small_lookup_ns(),
            "expired": sw.fdb.expire(1000.0)}


def _lookup_ns(sw: Switch, macs: list[bytes]) -> float:
    lookup, probe = sw.fdb.lookup, macs[:: max(len(macs) // 100_000, 1)]
    t0 = time.perf_counter()
    for mac in probe:
        lookup(VID, mac, 2.0)
    return (time.perf_counter() - t0) / len(probe) * 1e9


def _small_lookup_ns() -> float:
    macs = sweep_macs(1000)
    sw = switch(1000)
    for m in macs:
        sw.receive(1, MAC_B + m + TAIL, None, 1.0)
    return _lookup_ns(sw, macs * 100)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        n = int(args[0]) if args else 1_000_000
        if n < 1:
            raise ValueError
    except ValueError:
        print(f"usage: python -m vnet.bench.fdbmem [N]  (N: MACs to learn, a positive "
              f"integer, not {args[0]!r})", file=sys.stderr)
        return 2
    r = measure(n)
    print(f"{sys.implementation.name} {sys.version.split()[0]}: {r['entries']:.0f} entries "
          f"learned of {n}")
    print(f"  table memory      {r['bytes_per_entry']:.0f} B/entry (tracemalloc)")
    print(f"  new-source rate   {r['learn_fps'] / 1e3:.0f} k decisions/s")
    print(f"  lookup rate       {r['decision_fps'] / 1e3:.0f} k decisions/s")
    print(f"  Fdb.lookup        {r['fdb_lookup_ns']:.0f} ns at {r['entries']:.0f} entries, "
          f"{r['fdb_lookup_ns_small']:.0f} ns at 1000")
    print(f"  expired           {r['expired']:.0f} after the aging time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
