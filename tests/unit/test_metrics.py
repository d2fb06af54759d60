"""The metrics endpoint's pure parts: a snapshot rendered and parsed back with
prometheus_client's own parser, the samples read from the parts' dictionaries, and the HTTP
request head (``metricsserver.parse_head``) and replies, without a socket."""

from __future__ import annotations

import asyncio
import errno
from http import HTTPStatus

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from vnet.daemon.config import Endpoint
from vnet.daemon.metrics import (
    BUS_STATES,
    VM_STATES,
    DatapathSample,
    Snapshot,
    VmSample,
    bus_sample,
    port_sample,
    port_samples,
    render,
)
from vnet.daemon.metricsserver import HttpError, MetricsServer, bind_failure, parse_head
from vnet.daemon.vmlifecycle import VmEvent, VmLifecycle

STATS = {"pair": {
    "left.eth0": {"rx_frames": 12, "rx_bytes": 1176, "tx_frames": 11, "tx_bytes": 1078,
                  "drops": {"hairpin": 2, "rx-ring-full": 0}, "learn_limited": 3,
                  "mac_moves": 1, "tx_errors": {"tx-ring-full": 4}, "netdev_rx_frames": 12,
                  "kernel_flows": 2, "ring": {"rx_slots": 64, "rx_index": 3, "rx_ready": 0},
                  "ifname": "vn0"},
    "right.eth0": {"rx_frames": 11, "rx_bytes": 1078, "tx_frames": 12, "tx_bytes": 1176,
                   "drops": {}, "learn_limited": 0, "mac_moves": 0, "tx_errors": {}}}}


def snapshot(**changes: object) -> Snapshot:
    base: dict[str, object] = dict(
        version="0.1.0", datapath=DatapathSample(up=True, state="running", restarts=2,
                                                 adopted=False),
        labs=1, ports=port_samples(STATS), fdb=(("pair", 2),),
        vms=(VmSample("pair", "vm1", "running", 1),))
    base.update(changes)
    return Snapshot(**base)  # type: ignore[arg-type]


def parsed(snap: Snapshot) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the rendered text, as prometheus_client's parser reads it back."""
    body, content_type = render(snap)
    assert content_type.startswith("text/plain; version=0.0.4")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_port_counters_drops_and_errors_per_port() -> None:
    samples = parsed(snapshot())
    left = {"lab": "pair", "port": "left.eth0"}
    assert value(samples, "vnet_port_rx_frames_total", **left) == 12
    assert value(samples, "vnet_port_rx_bytes_total", **left) == 1176
    assert value(samples, "vnet_port_tx_frames_total", **left) == 11
    assert value(samples, "vnet_port_tx_bytes_total", **left) == 1078
    assert value(samples, "vnet_port_learn_limited_total", **left) == 3
    assert value(samples, "vnet_port_mac_moves_total", **left) == 1
    assert value(samples, "vnet_port_netdev_rx_frames_total", **left) == 12
    assert value(samples, "vnet_port_kernel_flows", **left) == 2
    assert value(samples, "vnet_port_kernel_flows", lab="pair", port="right.eth0") == 0
    assert value(samples, "vnet_port_drops_total", **left, reason="hairpin") == 2
    assert value(samples, "vnet_port_drops_total", **left, reason="rx-ring-full") == 0
    assert value(samples, "vnet_port_errors_total", **left, reason="tx-ring-full") == 4
    assert value(samples, "vnet_port_rx_frames_total", lab="pair", port="right.eth0") == 11
    # the ring's fill level is no counter, and the ifname no number: neither is a metric
    assert not [name for name, _ in samples if "ring" in name or "ifname" in name]


def test_types_and_help_are_given() -> None:
    body, _ = render(snapshot())
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["vnet_port_rx_frames"].type == "counter"
    assert families["vnet_fdb_entries"].type == "gauge"
    assert families["vnet_datapath_up"].type == "gauge"
    assert all(f.documentation for f in families.values())


def test_datapath_fdb_and_vm_families() -> None:
    samples = parsed(snapshot())
    assert value(samples, "vnet_datapath_up") == 1
    assert value(samples, "vnet_datapath_restarts_total") == 2
    assert value(samples, "vnet_datapath_state", state="running") == 1
    assert value(samples, "vnet_datapath_state", state="restarting") == 0
    assert value(samples, "vnet_fdb_entries", lab="pair") == 2
    assert value(samples, "vnet_labs") == 1
    assert value(samples, "vnet_info", version="0.1.0") == 1
    assert value(samples, "vnet_vm_restarts_total", lab="pair", node="vm1") == 1
    states = {state: value(samples, "vnet_vm_state", lab="pair", node="vm1", state=state)
              for state in VM_STATES}
    assert states == {state: int(state == "running") for state in VM_STATES}


def test_an_unreachable_datapath_is_said_and_the_rest_still_shown() -> None:
    down = DatapathSample(up=False, state="restarting", restarts=3, adopted=False)
    samples = parsed(snapshot(datapath=down, fdb=()))
    assert value(samples, "vnet_datapath_up") == 0
    assert value(samples, "vnet_datapath_state", state="restarting") == 1
    assert value(samples, "vnet_port_rx_frames_total", lab="pair", port="left.eth0") == 12
    assert not [key for key in samples if key[0] == "vnet_fdb_entries"]


def test_an_unknown_state_is_shown_too() -> None:
    samples = parsed(snapshot(vms=(VmSample("pair", "vm1", "weird", 0),)))
    assert value(samples, "vnet_vm_state", lab="pair", node="vm1", state="weird") == 1
    assert value(samples, "vnet_vm_state", lab="pair", node="vm1", state="running") == 0


def test_bus_families_only_with_a_bus() -> None:
    assert not [key for key in parsed(snapshot()) if key[0].startswith("vnet_bus_")]
    bus = bus_sample({"state": "connected", "connects": 2, "received": 40, "published": 17,
                      "publish_failed": 1, "refused": 1, "dropped": {"bad-json": 3},
                      "last_error": "x"}, connected=True, session_restarts=0)
    samples = parsed(snapshot(bus=bus))
    assert value(samples, "vnet_bus_connected") == 1
    assert value(samples, "vnet_bus_messages_received_total") == 40
    assert value(samples, "vnet_bus_messages_published_total") == 17
    assert value(samples, "vnet_bus_messages_dropped_total", kind="bad-json") == 3
    assert value(samples, "vnet_bus_publish_failed_total") == 1
    assert value(samples, "vnet_bus_connects_total") == 2
    assert value(samples, "vnet_bus_session_restarts_total") == 0
    assert {s: value(samples, "vnet_bus_state", state=s) for s in BUS_STATES} == {
        s: int(s == "connected") for s in BUS_STATES}


def test_samples_take_what_is_missing_or_wrong_as_zero() -> None:
    sample = port_sample("lab", "p", {"rx_frames": -1, "tx_frames": True, "rx_bytes": "7",
                                      "drops": {"runt": 2, "odd": None}, "tx_errors": [1]})
    assert (sample.rx_frames, sample.tx_frames, sample.rx_bytes) == (0, 0, 0)
    assert sample.drops == (("odd", 0), ("runt", 2)) and sample.errors == ()
    assert bus_sample({}, connected=False, session_restarts=0).state == "starting"


def test_label_values_are_escaped() -> None:
    odd = {'we"ird\\lab': {"a\nb": {"rx_frames": 1}}}
    samples = parsed(snapshot(ports=port_samples(odd)))
    assert value(samples, "vnet_port_rx_frames_total", lab='we"ird\\lab', port="a\nb") == 1


def test_openmetrics_when_asked_for() -> None:
    body, content_type = render(snapshot(), "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    names = {f.name for f in openmetrics_families(body.decode())}  # type: ignore[no-untyped-call]
    assert "vnet_port_rx_frames" in names


def test_vm_restarts_total_counts_every_automatic_restart() -> None:
    vm = VmLifecycle("always")
    vm.handle(VmEvent.START, 0.0)
    vm.handle(VmEvent.SPAWNED, 0.0)
    for i in range(3):
        vm.handle(VmEvent.EXITED_FAIL, 1.0 + i)
        vm.handle(VmEvent.RESTART_DUE, 1.5 + i)
        vm.handle(VmEvent.SPAWNED, 1.5 + i)
    vm.handle(VmEvent.STOP, 10.0)
    vm.handle(VmEvent.EXITED_OK, 10.0)
    vm.handle(VmEvent.START, 11.0)   # a deliberate start: the burst count starts again,
    assert vm.restarts == [] and vm.restarts_total == 3   # the total does not


# ---- the HTTP side ----------------------------------------------------------------------------

def test_a_scrape_request() -> None:
    request = parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n"
                         b"Accept: application/openmetrics-text; version=1.0.0\r\n")
    assert (request.method, request.path) == ("GET", "/metrics")
    assert request.accept.startswith("application/openmetrics-text")
    assert parse_head(b"HEAD / HTTP/1.0").path == "/"


@pytest.mark.parametrize(("head", "status", "says"), [
    (b"hello", HTTPStatus.BAD_REQUEST, "not an HTTP request line"),
    (b"GET /metrics", HTTPStatus.BAD_REQUEST, "not an HTTP request line"),
    (b"GET /metrics HTTP/2.0", HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "HTTP/1.1"),
    (b"POST /metrics HTTP/1.1", HTTPStatus.METHOD_NOT_ALLOWED, "use GET /metrics"),
    (b"GET /other HTTP/1.1", HTTPStatus.NOT_FOUND, "the metrics are at /metrics"),
    (b"GET /metrics HTTP/1.1\r\nno colon here", HTTPStatus.BAD_REQUEST, "Name: value"),
    (b"GET /m\xe9trics HTTP/1.1", HTTPStatus.BAD_REQUEST, "not ASCII"),
])
def test_bad_requests_get_a_4xx_that_says_why(head: bytes, status: HTTPStatus,
                                              says: str) -> None:
    with pytest.raises(HttpError) as caught:
        parse_head(head)
    assert caught.value.status is status and says in caught.value.message


def serve(data: bytes, snap: Snapshot | Exception | None = None, *,
          eof: bool = True, read_timeout: float = 5.0) -> bytes:
    """The server's reply to ``data`` from a client (no socket: a fed stream reader)."""
    async def snapshot_now() -> Snapshot:
        if isinstance(snap, Exception):
            raise snap
        return snap if snap is not None else snapshot()

    async def main() -> bytes:
        reader = asyncio.StreamReader(limit=8 << 10)
        reader.feed_data(data)
        if eof:
            reader.feed_eof()
        server = MetricsServer(Endpoint("127.0.0.1", 0), snapshot_now, read_timeout=read_timeout)
        return await server._serve(reader)

    return asyncio.run(main())


def split(reply: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status, *headers = head.decode().split("\r\n")
    return status, dict(h.split(": ", 1) for h in headers), body


def test_the_server_answers_a_scrape() -> None:
    status, headers, body = split(serve(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert status == "HTTP/1.1 200 OK"
    assert headers["Connection"] == "close" and int(headers["Content-Length"]) == len(body)
    assert b'vnet_port_rx_frames_total{lab="pair",port="left.eth0"} 12.0' in body


def test_head_has_no_body_and_a_client_that_leaves_gets_nothing() -> None:
    status, headers, body = split(serve(b"HEAD /metrics HTTP/1.1\r\n\r\n"))
    assert status == "HTTP/1.1 200 OK" and body == b"" and int(headers["Content-Length"]) > 0
    assert serve(b"GET /metr") == b""


def test_the_server_refuses_bad_requests() -> None:
    status, headers, body = split(serve(b"DELETE /metrics HTTP/1.1\r\n\r\n"))
    assert status == "HTTP/1.1 405 Method Not Allowed" and headers["Allow"] == "GET, HEAD"
    assert split(serve(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n"))[0] == (
        "HTTP/1.1 431 Request Header Fields Too Large")
    status, _, body = split(serve(b"GET /metrics HTTP/1.1\r\n", eof=False, read_timeout=0.05))
    assert status == "HTTP/1.1 408 Request Timeout" and b"did not come" in body


def test_a_failing_snapshot_is_a_500_not_a_traceback() -> None:
    status, _, body = split(serve(b"GET /metrics HTTP/1.1\r\n\r\n", RuntimeError("bug")))
    assert status == "HTTP/1.1 500 Internal Server Error"
    assert body == b"internal error in vnetd (see its log)\n"


def test_an_address_vnetd_cannot_listen_on_is_said_with_a_remedy() -> None:
    where = Endpoint("127.0.0.1", 9470)
    assert bind_failure(where, OSError(errno.EADDRINUSE, "Address in use")) == (
        "metrics.listen 127.0.0.1:9470: the address is in use (another vnetd, or another "
        "exporter?): choose a free port for metrics: listen in the config file")
    assert "is not an address of this host" in bind_failure(
        Endpoint("::1", 1), OSError(errno.EADDRNOTAVAIL, "x"))
    assert bind_failure(where, PermissionError(errno.EACCES, "Permission denied")) == (
        "metrics.listen 127.0.0.1:9470: cannot listen there: Permission denied (vnet needs "
        "root: run it as root or with sudo)")
