"""vnet graph --serve: the address, the Host check, the live view shaped from status reads,
the page, the answers to requests (pure), and the poller and picture cache without sockets."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from vnet.cli import main
from vnet.errors import DaemonError, VnetError
from vnet.observe import graph, live, server
from vnet.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "topologies" / "demo.yaml"
BOUND = live.Address("127.0.0.1", 8470)


def lab_status(rx: int = 10, tx: int = 7, state: str = "running",
               vlans: tuple[int, ...] = (10,)) -> dict[str, Any]:
    nic = {"name": "eth0", "port": "a.eth0", "mode": "access", "vlans": list(vlans),
           "native": None, "ip": ["10.0.0.1/24"], "mac": "02:00:00:00:00:01",
           "counters": {"rx_frames": rx, "tx_frames": tx, "rx_bytes": rx * 60,
                        "tx_bytes": tx * 60, "drops": {"hairpin": 2, "runt": 1}}}
    return {"name": "lab1", "networks": [{"name": "blue", "vlan": 10, "mode": "isolated",
                                          "gateway": None, "uplink": None}],
            "nodes": [{"name": "a", "kind": "netns", "state": state, "nics": [nic]},
                      {"name": "vm", "kind": "vm", "state": "stopped", "nics": []}],
            "uplinks": [{"port": "up.eth9", "ifname": "eth9", "vlans": [10],
                         "counters": {"rx_frames": 3, "tx_frames": 4}}],
            "pending": [], "failed": None}


def status(*labs: dict[str, Any]) -> dict[str, Any]:
    return {"daemon": {"pid": 42, "version": "0.1.0", "datapath_restarts": 0},
            "labs": list(labs)}


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:8080", live.Address("127.0.0.1", 8080)),
    ("localhost", live.Address("127.0.0.1", live.DEFAULT_PORT)),
    ("9000", live.Address("127.0.0.1", 9000)),
    ("0.0.0.0:0", live.Address("0.0.0.0", 0)),
    ("[::1]:8471", live.Address("::1", 8471)),
    ("[::1]", live.Address("::1", live.DEFAULT_PORT)),
    ("::1", live.Address("::1", live.DEFAULT_PORT)),
])
def test_addresses(text: str, expected: live.Address) -> None:
    assert live.parse_address(text) == expected


@pytest.mark.parametrize(("text", "says"), [
    ("example.com:80", "'example.com' is not an IP address"),
    ("127.0.0.1:http", "the port 'http' is not a number"),
    ("127.0.0.1:70000", "not a number from 0 to 65535"),
    ("[::1:80", "cannot read the address"),
])
def test_bad_addresses_say_what_to_give(text: str, says: str) -> None:
    with pytest.raises(VnetError, match="give --serve HOST:PORT") as err:
        live.parse_address(text)
    assert says in str(err.value)


def test_urls() -> None:
    assert BOUND.url() == "http://127.0.0.1:8470/"
    assert live.Address("::1", 80).url() == "http://[::1]:80/"


@pytest.mark.parametrize(("header", "bound", "allowed"), [
    ("127.0.0.1:8470", BOUND, True),
    ("localhost:8470", BOUND, True),
    ("LocalHost:8470", BOUND, True),
    ("evil.example:8470", BOUND, False),        # a rebound name
    ("127.0.0.2:8470", BOUND, False),
    ("127.0.0.1:8471", BOUND, False),
    ("127.0.0.1", BOUND, False),                # port 80
    ("127.0.0.1:8470:1", BOUND, False),
    ("[::1]:8470", BOUND, False),
    (None, BOUND, False),
    ("", BOUND, False),
    ("[::1]:8470", live.Address("::1", 8470), True),
    ("[::1]", live.Address("::1", 8470), False),
    ("localhost:8470", live.Address("::1", 8470), True),
    ("10.1.2.3:8470", live.Address("0.0.0.0", 8470), True),   # any IP when bound to all
    ("localhost:8470", live.Address("0.0.0.0", 8470), True),
    ("lab.example:8470", live.Address("0.0.0.0", 8470), False),
    ("localhost:8470", live.Address("10.1.2.3", 8470), False),
    ("127.0.0.1", live.Address("127.0.0.1", 80), True),
])
def test_the_host_header_must_name_the_bound_address(header: str | None, bound: live.Address,
                                                     allowed: bool) -> None:
    assert live.host_allowed(header, bound) is allowed


def test_before_any_read_the_view_is_waiting() -> None:
    view = live.live_view("lab1", None, None, now=5.0)
    assert view["state"] == "waiting" and view["ports"] == [] and view["layout"] == ""


def test_vnetd_unreachable_is_said_not_raised() -> None:
    sample = live.Sample(10.0, None, "vnetd is not running (no answer on /x.sock)")
    view = live.live_view("lab1", sample, None, now=10.5)
    assert view["state"] == "unreachable"
    assert view["message"] == "vnetd unreachable: vnetd is not running (no answer on /x.sock)"
    assert view["age"] == 0.5


def test_a_lab_that_is_not_up() -> None:
    view = live.live_view("other", live.Sample(1.0, status(lab_status())), None, now=1.0)
    assert view["state"] == "down" and "lab other is not up" in view["message"]
    assert view["daemon"]["pid"] == 42


def test_ports_with_counters_rates_and_node_states() -> None:
    before = live.Sample(10.0, status(lab_status(rx=10, tx=7)))
    after = live.Sample(12.0, status(lab_status(rx=30, tx=8)))
    view = live.live_view("lab1", after, before, now=12.2)
    assert view["state"] == "ok" and view["message"].startswith("live: read 0.2 s ago")
    assert view["nodes"] == [
        {"name": "a", "kind": "netns", "state": "running", "colour": "#2ca02c"},
        {"name": "vm", "kind": "vm", "state": "stopped", "colour": "#7f7f7f"}]
    port, uplink = view["ports"]
    assert port == {"node": "a", "nic": "eth0", "port": "a.eth0", "mode": "access",
                    "vlans": "10", "rx_frames": 30, "tx_frames": 8, "rx_bytes": 1800,
                    "tx_bytes": 480, "drops": 3, "rx_rate": 10.0, "tx_rate": 0.5}
    assert (uplink["node"], uplink["nic"], uplink["rx_frames"], uplink["drops"]) == (
        "uplink", "eth9", 3, 0)
    assert uplink["rx_rate"] == 0.0


def test_a_counter_that_went_down_has_no_rate() -> None:
    before = live.Sample(10.0, status(lab_status(rx=100)))
    after = live.Sample(11.0, status(lab_status(rx=5)))
    port = live.live_view("lab1", after, before, now=11.0)["ports"][0]
    assert port["rx_frames"] == 5 and port["rx_rate"] is None
    first = live.live_view("lab1", before, None, now=10.0)["ports"][0]
    assert first["rx_rate"] is None                   # one read: no rate yet


def test_an_old_read_is_stale_and_says_so() -> None:
    sample = live.Sample(10.0, status(lab_status()))
    view = live.live_view("lab1", sample, None, now=10.0 + live.STALE_AFTER + 3)
    assert view["state"] == "stale" and "has not answered for 8 s" in view["message"]
    assert view["ports"][0]["rx_frames"] == 10        # still shown, from then


def test_a_lab_not_all_there_says_so() -> None:
    lab = {**lab_status(), "failed": "node a: its namespace is gone"}
    view = live.live_view("lab1", live.Sample(1.0, status(lab)), None, now=1.0)
    assert view["message"].endswith("the lab is not all there: node a: its namespace is gone")


def test_the_layout_key_follows_the_picture_not_the_counters() -> None:
    key = live.layout_key(lab_status())
    assert key == live.layout_key(lab_status(rx=99, state="crashed"))
    assert key != live.layout_key(lab_status(vlans=(20,)))
    assert live.layout_key(None) == ""


def test_a_file_picture_gets_the_live_states() -> None:
    picture = graph.from_topology(load_topology(DEMO))
    lab = {"nodes": [{"name": "alice", "state": "running"}, {"name": "vm1",
                                                              "state": "crashed"}]}
    states = {n.name: n.state for n in live.with_states(picture, lab).nodes}
    assert states["alice"] == "running" and states["vm1"] == "crashed"
    assert states["bob"] == "missing"                 # in the file, not in the lab
    assert live.with_states(picture, lab).live
    assert live.with_states(picture, None) is picture


SVG = ('<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n<!DOCTYPE svg PUBLIC "x">\n'
       '<svg width="10pt"><g class="node"><title>node:a</title></g></svg>\n')


def test_the_page_inlines_the_picture_and_its_script_matches_the_policy() -> None:
    view = live.live_view("lab1", None, None, now=0.0)
    html = live.page("<lab1>", SVG, "abc123", view)
    assert "<?xml" not in html and "DOCTYPE svg" not in html
    assert '<div id="picture"><svg width="10pt">' in html
    assert "<h1>vnet lab &lt;lab1&gt;</h1>" in html and 'data-layout="abc123"' in html
    assert 'class="waiting">waiting for vnetd' in html
    for tag, kind in (("script", "script-src"), ("style", "style-src")):
        body = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
        assert body
        digest = base64.b64encode(hashlib.sha256(body.group(1).encode()).digest()).decode()
        assert f"{kind} 'sha256-{digest}'" in live.CONTENT_SECURITY_POLICY
    assert "<th>rx frames</th>" in html


def test_a_page_without_a_picture_says_why() -> None:
    html = live.page("lab1", None, "", live.live_view("lab1", live.Sample(
        0.0, None, "down"), None, now=0.0))
    assert "No picture yet" in html and 'class="bad">vnetd unreachable: down' in html


def answer(method: str = "GET", target: str = "/", host: str | None = "127.0.0.1:8470",
           svg: str | None = SVG) -> live.Response:
    return live.respond(method, target, host, BOUND, lambda: "<html>page</html>",
                        lambda: svg, lambda: {"state": "ok"})


def test_the_answers() -> None:
    page = answer()
    assert (page.status, page.content_type, page.body) == (
        200, "text/html; charset=utf-8", b"<html>page</html>")
    headers = dict(page.headers)
    assert headers["Content-Security-Policy"] == live.CONTENT_SECURITY_POLICY
    assert headers["Cache-Control"] == "no-store"
    assert answer(target="/index.html?x=1").status == 200
    got = answer(target="/live.json")
    assert got.content_type == "application/json" and json.loads(got.body) == {"state": "ok"}
    assert answer(target="/graph.svg").content_type == "image/svg+xml"
    assert answer(target="/graph.svg", svg=None).status == 503
    missing = answer(target="/etc/passwd")
    assert missing.status == 404 and b"/live.json" in missing.body
    assert answer("HEAD", "/live.json").status == 200    # the adapter leaves out the body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "FOO"])
def test_read_only(method: str) -> None:
    got = answer(method, "/live.json")
    assert got.status == 405 and ("Allow", "GET, HEAD") in got.headers
    assert b"read-only" in got.body


def test_a_foreign_host_gets_nothing() -> None:
    for method in ("GET", "POST"):
        got = answer(method, "/live.json", host="attacker.example:8470")
        assert got.status == 403 and b"127.0.0.1:8470 only" in got.body
        assert b"state" not in got.body


def test_the_poller_keeps_the_last_two_reads_and_an_error_as_words() -> None:
    answers: list[Any] = [status(lab_status(rx=1)), DaemonError("vnetd is not running")]
    clock = iter([1.0, 2.0])

    def fetch() -> dict[str, Any]:
        got = answers.pop(0)
        if isinstance(got, Exception):
            raise got
        return dict(got)

    poller = server.Poller(fetch, clock=lambda: next(clock))
    poller.read_once()
    poller.read_once()
    current, previous = poller.samples()
    assert current == live.Sample(2.0, None, "vnetd is not running")
    assert previous is not None and previous.lab("lab1") is not None


def test_the_picture_is_drawn_again_only_when_it_changed() -> None:
    reads = [status(lab_status()), status(lab_status(rx=50)),
             status(lab_status(state="crashed"))]
    poller = server.Poller(lambda: reads.pop(0), clock=lambda: 1.0)
    drawn: list[str] = []

    def render(dot: str) -> str:
        drawn.append(dot)
        return f"<svg>{len(drawn)}</svg>"

    def picture(lab: Any) -> graph.LabGraph | None:
        return graph.from_status(lab) if lab is not None else None

    content = server.LivePage("lab1", poller, picture, render, clock=lambda: 1.0)
    assert content.svg() is None and drawn == []        # no read yet: no picture
    poller.read_once()
    assert content.svg() == "<svg>1</svg>"
    poller.read_once()                                  # counters moved: the same picture
    assert content.svg() == "<svg>1</svg>" and len(drawn) == 1
    poller.read_once()                                  # a state changed: drawn anew
    assert "<svg>2</svg>" in content.page() and "[crashed]" in drawn[1]
    assert content.view()["nodes"][0]["state"] == "crashed"


def test_the_cli_refuses_serve_with_a_file_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", str(DEMO), "--serve", "-o", "x.svg"]) == 1
    assert "leave out -o and --json" in capsys.readouterr().err
    assert main(["graph", str(DEMO), "--serve", "web.example:80"]) == 1
    assert "'web.example' is not an IP address" in capsys.readouterr().err


def test_the_help_names_the_default_address(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["graph", "--help"])
    assert f"default {live.DEFAULT_ADDRESS}" in " ".join(capsys.readouterr().out.split())
