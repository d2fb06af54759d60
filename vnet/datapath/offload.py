"""Kernel flows: the switch's steady unicast decisions handed to the kernel (a fast path).

Open vSwitch forwards a flow's frames in its kernel datapath once ovs-vswitchd has decided
them.  vnet is to do the same with what the kernels here have (cls_bpf and act_mirred): when
the Python switch has sent ``threshold`` frames of one (in-port, source MAC, destination MAC)
within a ``window``, each arriving untagged and sent untagged out of exactly one port, the
datapath installs a *kernel flow* on the in-port's netdev that redirects those frames to the
out-port's netdev, and a socket filter that keeps them out of its own ring.  The Python switch
stays the one that decides; the kernel only repeats a decision, and only while it is still
the decision.

This module is the policy, pure (``now`` is an argument; no I/O), one ``Offload`` per switch:

* **Candidates** (``note``, on the path of every frame of a steady flow, kept short: the
  switch's decision was cached): untagged in, one untagged out.  Floods, tagged frames,
  mirrored ports and non-netdev ports never get one.
* **Install** (``plan``): ``Switch.unicast_egress`` (the full decision's rules, changing
  nothing) must name the same out-port now; both ports must be eligible.
* **Revalidation** (``plan``): whenever the FDB's generation has moved (a MAC learned, moved,
  aged out, flushed; a port removed), every kernel flow of the switch is checked again, at
  most every ``revalidate_every``; one whose decision changed is removed, and its frames
  come back to Python, which floods, learns and drops as before.
* **Accounting** (``account``, once a second): the kernel's per-flow counts refresh the
  source MAC as the frames would have in Python (a running flow keeps its MAC learned), are
  added to both ports' counters, and a flow idle for ``idle`` seconds is removed (OVS's
  max-idle).

The edge that applies the plans (tc cls_bpf + mirred redirects on the in-port's netdev, and
a socket filter keeping their frames out of the datapath's ring) is
``vnet.datapath.kernelflows``; measurements in docs/benchmarks.md, "Kernel flows".
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field

from vnet.switch import Switch
from vnet.switch.fdb import LearnResult

# tc ingress sees a frame from its network header on, so its action counts leave out the
# Ethernet header (measured: tests/integration/test_host_tcflow.py, tcflow.COUNTED_ETH_HEADER)
ETH_HEADER = 14


@dataclass(frozen=True)
class OffloadSettings:
    threshold: int = 32          # frames of a flow within one window before it is offloaded
    window: float = 1.0          # seconds over which ``threshold`` is counted
    idle: float = 10.0           # a kernel flow without frames this long is removed
    revalidate_every: float = 5e-3  # at most this often after the tables changed
    max_flows: int = 512         # per switch (each is a filter the kernel tries in turn)
    max_per_port: int = 48       # per in-port: what its socket filter can hold (cbpf.MAX_PAIRS)
    max_candidates: int = 1024   # flows counted per window: a sweep of new MACs costs no more
    retry_after: float = 10.0    # a flow the kernel refused is not tried again before this


@dataclass(frozen=True)
class KernelFlow:
    """Frames from ``src`` to ``dst`` arriving untagged on ``in_port`` go out of ``out_port``
    (both in VLAN ``vid``); ``handle`` names its filter on the in-port's netdev."""

    in_port: int
    src: bytes
    dst: bytes
    vid: int
    out_port: int
    handle: int

    @property
    def key(self) -> tuple[int, bytes]:
        return self.in_port, self.dst + self.src   # as ``note`` sees it: the first 12 bytes


@dataclass(frozen=True)
class Plan:
    """What the kernel should be told: flows to remove (first), flows to install."""

    remove: tuple[KernelFlow, ...] = ()
    install: tuple[KernelFlow, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.remove or self.install)


@dataclass
class _Installed:
    flow: KernelFlow
    active: float            # when its counts last moved (or it was installed)
    packets: int = 0         # the kernel's counts, as last read
    octets: int = 0


@dataclass(frozen=True)
class FlowCount:
    """A kernel flow's cumulative counts, as the kernel reports them."""

    packets: int
    octets: int   # from the network header on (tc ingress)


@dataclass
class Offload:
    """The kernel flows of one switch (see the module docstring)."""

    switch: Switch
    settings: OffloadSettings = field(default_factory=OffloadSettings)
    eligible: set[int] = field(default_factory=set)     # port numbers that may have flows
    pending: list[tuple[int, bytes]] = field(default_factory=list)  # reached the threshold
    flows: dict[tuple[int, bytes], _Installed] = field(default_factory=dict)
    _counts: dict[tuple[int, bytes], int] = field(default_factory=dict)
    _window_end: float = 0.0
    _refused: dict[tuple[int, bytes], float] = field(default_factory=dict)
    _generation: int = -1
    _checked: float = float("-inf")
    _next_handle: int = 1

    # ---- the frame path ----------------------------------------------------------------

    def note(self, in_port: int, frame: bytes) -> None:
        """A frame the switch sent untagged to one port, that arrived untagged on
        ``in_port``: counted towards its flow's threshold."""
        if in_port in self.eligible:
            key = (in_port, frame[:12])
            counts = self._counts
            seen = counts.get(key)
            if seen is None:
                if len(counts) >= self.settings.max_candidates:
                    return   # a sweep of new flows: the rest wait for the next window
                seen = 0
            seen += 1
            counts[key] = seen
            if seen == self.settings.threshold:
                self.pending.append(key)

    # ---- decisions -----------------------------------------------------------------------

    def plan(self, now: float) -> Plan:
        """The flows to install (candidates whose decision holds) and to remove (flows
        whose decision no longer does), with the tables as they are at ``now``."""
        if now >= self._window_end:
            self._counts.clear()
            self._window_end = now + self.settings.window
            self._refused = {key: until for key, until in self._refused.items() if until > now}
        remove = self._revalidate(now)
        install: list[KernelFlow] = []
        for key in self.pending:
            flow = self._candidate(key, now)
            if flow is not None:
                self.flows[key] = _Installed(flow, now)
                install.append(flow)
        self.pending.clear()
        return Plan(tuple(remove), tuple(install))

    def _candidate(self, key: tuple[int, bytes], now: float) -> KernelFlow | None:
        in_port, macs = key
        if (key in self.flows or len(self.flows) >= self.settings.max_flows
                or self._refused.get(key, now) > now
                or self.on_port(in_port) >= self.settings.max_per_port):
            return None
        dst, src = macs[:6], macs[6:12]
        egress = self.switch.unicast_egress(in_port, src, dst, now)
        if egress is None or egress[1] not in self.eligible:
            return None
        vid, out = egress
        handle = self._next_handle
        self._next_handle = handle % 0x7FFF_FFFF + 1
        return KernelFlow(in_port, src, dst, vid, out, handle)

    def _revalidate(self, now: float) -> list[KernelFlow]:
        generation = self.switch.fdb.generation
        if (not self.flows or generation == self._generation
                or now - self._checked < self.settings.revalidate_every):
            return []
        self._generation, self._checked = generation, now
        gone = [entry.flow for entry in self.flows.values() if not self._holds(entry.flow, now)]
        for flow in gone:
            del self.flows[flow.key]
        return gone

    def _holds(self, flow: KernelFlow, now: float) -> bool:
        return (flow.in_port in self.eligible and flow.out_port in self.eligible
                and self.switch.unicast_egress(flow.in_port, flow.src, flow.dst, now)
                == (flow.vid, flow.out_port))

    # ---- what the kernel said ------------------------------------------------------------

    def refused(self, flow: KernelFlow, now: float) -> None:
        """The kernel would not take ``flow``: its frames stay in Python for a while."""
        self.flows.pop(flow.key, None)
        self._refused[flow.key] = now + self.settings.retry_after

    def account(self, counts: Mapping[tuple[int, int], FlowCount], now: float) -> Plan:
        """The kernel's cumulative counts, by (in-port, handle), of the flows it holds:
        what moved is counted on the ports and refreshes the sources; idle flows go."""
        switch = self.switch
        idle: list[KernelFlow] = []
        for entry in list(self.flows.values()):
            flow = entry.flow
            count = counts.get((flow.in_port, flow.handle))
            if count is not None and count.packets > entry.packets:
                frames = count.packets - entry.packets
                octets = count.octets - entry.octets + frames * ETH_HEADER
                entry.packets, entry.octets, entry.active = count.packets, count.octets, now
                rx, tx = switch.counters(flow.in_port), switch.counters(flow.out_port)
                rx.rx_frames += frames
                rx.rx_bytes += octets
                tx.tx_frames += frames
                tx.tx_bytes += octets
                if switch.fdb.learn(flow.vid, flow.src, flow.in_port, now) \
                        != LearnResult.REFRESHED:
                    self._generation = -1   # it had aged out: check the flows again
            elif now - entry.active >= self.settings.idle:
                idle.append(flow)
        for flow in idle:
            del self.flows[flow.key]
        return Plan(remove=tuple(idle))

    # ---- ports ------------------------------------------------------------------------------

    def allow(self, port: int) -> None:
        """``port`` may have kernel flows (a netdev port with no mirror)."""
        self.eligible.add(port)

    def disallow(self, port: int) -> Plan:
        """``port`` may no longer have kernel flows (it is mirrored, or removed): those
        through it, either way, are to be removed."""
        self.eligible.discard(port)
        return Plan(remove=tuple(self._take(e.flow for e in self.flows.values()
                                            if port in (e.flow.in_port, e.flow.out_port))))

    def clear(self) -> Plan:
        """Every flow to be removed (the datapath is closing, or lost its kernel flows)."""
        return Plan(remove=tuple(self._take(e.flow for e in self.flows.values())))

    def _take(self, flows: Iterable[KernelFlow]) -> list[KernelFlow]:
        taken = list(flows)
        for flow in taken:
            del self.flows[flow.key]
        return taken

    def pairs(self, in_port: int, leave_out: Container[tuple[int, bytes]] = ()
              ) -> list[tuple[bytes, bytes]]:
        """(source, destination) of the flows the kernel redirects from ``in_port`` (but
        those keyed in ``leave_out``: not installed yet): what its socket filter keeps out
        of the datapath's ring."""
        return [(e.flow.src, e.flow.dst) for e in self.flows.values()
                if e.flow.in_port == in_port and e.flow.key not in leave_out]

    def on_port(self, in_port: int) -> int:
        return sum(1 for e in self.flows.values() if e.flow.in_port == in_port)
