"""What vnetd's Prometheus endpoint says: a typed snapshot of the daemon, and its families.

Pure: ``port_sample``/``bus_sample`` read the dictionaries the parts already keep (the
datapath's port counters as ``counters.CounterTotals`` totals them, ``BusStats.as_dict()``)
into frozen samples, ``families`` turns a ``Snapshot`` into metric families, and ``render``
encodes them for a scrape (the Prometheus text format, or OpenMetrics if the scraper asks
for it).  vnetd takes a new snapshot for every scrape (``Vnetd.metrics_snapshot``), so no
value is older than the scrape; the HTTP side is ``metricsserver``.

Every counter here only goes up for as long as what it counts exists: the port counters are
totals over the datapath's runs (``counters``); a deleted port, a vnetd restart (for the
datapath's and VMs' restart counts) or a new bus session (for the bus counters) start a
series again from zero, a counter reset that ``rate()`` handles.  A state is a state set:
one sample per possible state, 1 for the current one, so that ``vnet_vm_state{state=
"running"} == 0`` is an alert rule.  The switch's bridge of a lab is named as the lab, so
ports and MAC tables carry a ``lab`` label.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from vnet.daemon.restartpolicy import Phase
from vnet.daemon.vmlifecycle import VmState

PREFIX = "vnet"
DATAPATH_STATES = tuple(p.value for p in Phase)
VM_STATES = tuple(s.value for s in VmState)
BUS_STATES = ("starting", "connecting", "connected", "backoff", "stopped")

Reasons = tuple[tuple[str, int], ...]   # (reason, count), sorted by reason


@dataclass(frozen=True)
class PortSample:
    """One switch port's totals (``docs/counters.md`` says what each counts)."""

    lab: str
    port: str
    rx_frames: int = 0
    rx_bytes: int = 0
    tx_frames: int = 0
    tx_bytes: int = 0
    learn_limited: int = 0
    mac_moves: int = 0
    netdev_rx_frames: int = 0
    kernel_flows: int = 0       # a gauge: the kernel flows from the port now
    drops: Reasons = ()
    errors: Reasons = ()        # the port's ``tx_errors``: I/O errors of both directions


@dataclass(frozen=True)
class DatapathSample:
    up: bool                    # it answered this scrape's reads
    state: str                  # one of DATAPATH_STATES (or vnetd's supervision "failed")
    restarts: int               # automatic restarts since vnetd started
    adopted: bool               # an earlier vnetd started it


@dataclass(frozen=True)
class VmSample:
    lab: str
    node: str
    state: str                  # one of VM_STATES
    restarts: int               # automatic restarts since vnetd started (or adopted) it


@dataclass(frozen=True)
class BusSample:
    state: str                  # one of BUS_STATES
    connected: bool
    connects: int = 0
    received: int = 0
    published: int = 0
    publish_failed: int = 0
    refused: int = 0
    dropped: Reasons = ()       # refused incoming messages, by kind (``vnet.bus.errors``)
    session_restarts: int = 0   # sessions ended by an internal error and started again


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape shows, as vnetd saw it at that moment."""

    version: str
    datapath: DatapathSample
    labs: int = 0
    ports: tuple[PortSample, ...] = ()
    fdb: tuple[tuple[str, int], ...] = ()    # (lab, MAC table entries) the datapath told
    vms: tuple[VmSample, ...] = ()
    bus: BusSample | None = None             # None: no bus configured


# ---- from the parts' own dictionaries ---------------------------------------------------------

def _count(value: Any) -> int:
    """A counter's value; anything that is not a non-negative integer counts as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _reasons(value: Any) -> Reasons:
    if not isinstance(value, Mapping):
        return ()
    return tuple(sorted((str(reason), _count(count)) for reason, count in value.items()))


def port_sample(lab: str, port: str, stats: Mapping[str, Any]) -> PortSample:
    """A port's entry of ``DatapathSupervisor.counters()`` as a sample (missing keys: 0)."""
    return PortSample(lab, port, rx_frames=_count(stats.get("rx_frames")),
                      rx_bytes=_count(stats.get("rx_bytes")),
                      tx_frames=_count(stats.get("tx_frames")),
                      tx_bytes=_count(stats.get("tx_bytes")),
                      learn_limited=_count(stats.get("learn_limited")),
                      mac_moves=_count(stats.get("mac_moves")),
                      netdev_rx_frames=_count(stats.get("netdev_rx_frames")),
                      kernel_flows=_count(stats.get("kernel_flows")),
                      drops=_reasons(stats.get("drops")), errors=_reasons(stats.get("tx_errors")))


def port_samples(stats: Mapping[str, Mapping[str, Mapping[str, Any]]]
                 ) -> tuple[PortSample, ...]:
    """Every port of ``{bridge: {port: stats}}``, in order of lab and port."""
    return tuple(port_sample(lab, port, stats[lab][port]) for lab in sorted(stats)
                 for port in sorted(stats[lab]))


def bus_sample(stats: Mapping[str, Any], *, connected: bool, session_restarts: int
               ) -> BusSample:
    """``BusStats.as_dict()`` as a sample."""
    state = stats.get("state")
    return BusSample(state=state if isinstance(state, str) else "starting", connected=connected,
                     connects=_count(stats.get("connects")), received=_count(stats.get("received")),
                     published=_count(stats.get("published")),
                     publish_failed=_count(stats.get("publish_failed")),
                     refused=_count(stats.get("refused")), dropped=_reasons(stats.get("dropped")),
                     session_restarts=_count(session_restarts))


# ---- the families -----------------------------------------------------------------------------

def _counter(name: str, doc: str, labels: Sequence[str],
             samples: Iterable[tuple[Sequence[str], int]]) -> CounterMetricFamily:
    family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)
    for values, value in samples:
        family.add_metric(list(values), value)
    return family


def _gauge(name: str, doc: str, labels: Sequence[str],
           samples: Iterable[tuple[Sequence[str], float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)
    for values, value in samples:
        family.add_metric(list(values), value)
    return family


def _state_set(current: str, states: Sequence[str]) -> list[tuple[str, int]]:
    """One sample per state, 1 for ``current`` (a state not in ``states`` is added)."""
    known = list(states) if current in states else [*states, current]
    return [(state, int(state == current)) for state in known]


PORT_COUNTERS = (  # (attribute and metric name, what it counts)
    ("rx_frames", "Frames the switch took in on the port (drops included)."),
    ("rx_bytes", "Bytes of the frames the switch took in on the port."),
    ("tx_frames", "Frames the switch sent out of the port."),
    ("tx_bytes", "Bytes of the frames the switch sent out of the port."),
    ("learn_limited", "Frames whose source MAC was not learned: the port's MAC limit was "
                      "reached."),
    ("mac_moves", "Learned MACs that moved to this port from another."),
    ("netdev_rx_frames", "Frames the port's netdev received, by the kernel's count, since the "
                         "port was opened."),
)


def families(snap: Snapshot) -> list[Metric]:
    """The snapshot's metric families, in a fixed order."""
    out: list[Metric] = [
        _gauge("info", "vnetd's version (the value is always 1).", ["version"],
               [([snap.version], 1)]),
        _gauge("labs", "Labs this vnetd holds.", [], [([], snap.labs)]),
        _gauge("datapath_up", "1 if the datapath answered this scrape; 0: the port counters "
               "are the last vnetd read, and the MAC tables are left out.", [],
               [([], int(snap.datapath.up))]),
        _gauge("datapath_state", "The datapath's supervision state (1 for the current one).",
               ["state"], [([state], v) for state, v
                           in _state_set(snap.datapath.state, DATAPATH_STATES)]),
        _counter("datapath_restarts", "Automatic restarts of the datapath since vnetd started.",
                 [], [([], snap.datapath.restarts)]),
        _gauge("datapath_adopted", "1 if the running datapath was adopted from an earlier "
               "vnetd.", [], [([], int(snap.datapath.adopted))]),
    ]
    for name, doc in PORT_COUNTERS:
        out.append(_counter(f"port_{name}", doc, ["lab", "port"],
                            (([p.lab, p.port], getattr(p, name)) for p in snap.ports)))
    out.append(_counter("port_drops", "Frames the switch or the kernel dropped on the port, by "
                        "reason (docs/counters.md).", ["lab", "port", "reason"],
                        (([p.lab, p.port, reason], n) for p in snap.ports
                         for reason, n in p.drops)))
    out.append(_counter("port_errors", "The port's I/O errors, by reason (its tx_errors, both "
                        "directions).", ["lab", "port", "reason"],
                        (([p.lab, p.port, reason], n) for p in snap.ports
                         for reason, n in p.errors)))
    out.append(_gauge("port_kernel_flows", "Kernel flows (tc redirects) from the port now: "
                      "their frames bypass Python and are added to the port's counters once "
                      "a second.", ["lab", "port"],
                      (([p.lab, p.port], p.kernel_flows) for p in snap.ports)))
    out.append(_gauge("fdb_entries", "Entries in the lab's MAC table (learned and static).",
                      ["lab"], (([lab], n) for lab, n in snap.fdb)))
    out.append(_gauge("vm_state", "Each VM's runner state (1 for the current one).",
                      ["lab", "node", "state"],
                      (([vm.lab, vm.node, state], v) for vm in snap.vms
                       for state, v in _state_set(vm.state, VM_STATES))))
    out.append(_counter("vm_restarts", "Automatic restarts of each VM's runner since vnetd "
                        "started or adopted it.", ["lab", "node"],
                        (([vm.lab, vm.node], vm.restarts) for vm in snap.vms)))
    if snap.bus is not None:
        out.extend(_bus_families(snap.bus))
    return out


def _bus_families(bus: BusSample) -> Iterator[Metric]:
    yield _gauge("bus_connected", "1 if the bus client is connected to the broker.", [],
                 [([], int(bus.connected))])
    yield _gauge("bus_state", "The bus client's state (1 for the current one).", ["state"],
                 [([state], v) for state, v in _state_set(bus.state, BUS_STATES)])
    yield _counter("bus_connects", "Connections made to the broker.", [], [([], bus.connects)])
    yield _counter("bus_messages_received", "Messages received from the bus.", [],
                   [([], bus.received)])
    yield _counter("bus_messages_published", "Messages published to the bus.", [],
                   [([], bus.published)])
    yield _counter("bus_messages_dropped", "Received messages refused and dropped, by kind.",
                   ["kind"], [([kind], n) for kind, n in bus.dropped])
    yield _counter("bus_publish_failed", "Publishes that failed (the broker refused them, or "
                   "the connection was down).", [], [([], bus.publish_failed)])
    yield _counter("bus_session_restarts", "Bus sessions ended by an internal error and "
                   "started again.", [], [([], bus.session_restarts)])


class SnapshotCollector:
    """A prometheus_client collector of one snapshot (``collect`` is what ``generate_latest``
    calls)."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> list[Metric]:
        return families(self.snap)


def render(snap: Snapshot, accept: str = "") -> tuple[bytes, str]:
    """The scrape's body and its content type, in the format the ``Accept`` header asks for
    (the Prometheus text format unless it asks for OpenMetrics)."""
    encoder, content_type = choose_encoder(accept)
    return encoder(SnapshotCollector(snap)), content_type
