"""The live page of a lab (``vnet graph LAB --serve``): pure parts.

What is served: the lab's picture (``graph``'s DOT through graphviz, as inline SVG) on a page
whose small script asks ``live.json`` every second for the node states and each port's
counters and rates, from the last ``vnet status`` the server read (``server`` polls vnetd in
the background, so a page never waits on vnetd and any number of pages cost vnetd one status
a second).  Read-only: GET and HEAD, nothing else.

DNS rebinding: a page of some web site whose name the attacker then points at 127.0.0.1
could read this server if it answered any ``Host``; so a request is answered only when its
``Host`` is the address the server is bound to (or ``localhost``, which no attacker can
point anywhere; any IP literal when bound to a wildcard address: only names can be rebound).

Everything here takes its inputs (the status answers, ``now``) as arguments: the HTTP
adapter is ``vnet.observe.server``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import ipaddress
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vnet.errors import VnetError
from vnet.observe.graph import STATE_COLOURS, LabGraph

DEFAULT_PORT = 8470
DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"
POLL = 1.0           # seconds between two status reads, and between two page updates
STALE_AFTER = 5.0    # seconds without an answer from vnetd before the page says so
UNKNOWN_COLOUR = "#ff7f0e"


# -- the address ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Address:
    host: str      # an IP literal (without brackets)
    port: int

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.host)

    def authority(self) -> str:
        """``host:port`` as in a URL (IPv6 in brackets)."""
        host = f"[{self.host}]" if self.ip.version == 6 else self.host
        return f"{host}:{self.port}"

    def url(self) -> str:
        return f"http://{self.authority()}/"


def parse_address(text: str) -> Address:
    """``HOST:PORT``, ``HOST``, ``PORT`` or ``[V6]:PORT``; HOST an IP address or
    ``localhost`` (127.0.0.1); the port defaults to ``DEFAULT_PORT``, 0 picks a free one."""
    hint = (f"give --serve HOST:PORT with HOST an IP address or localhost, e.g. "
            f"{DEFAULT_ADDRESS} (the default) or [::1]:{DEFAULT_PORT}")
    text = text.strip()
    host, port_text = text, ""
    if text.isdigit():
        host, port_text = "127.0.0.1", text
    elif text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise VnetError(f"cannot read the address {text!r}: {hint}")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    host = "127.0.0.1" if host.lower() == "localhost" else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise VnetError(f"cannot listen on {text!r}: {host!r} is not an IP address; "
                        f"{hint}") from None
    if port_text == "":
        return Address(host, DEFAULT_PORT)
    if not port_text.isdigit() or int(port_text) > 65535:
        raise VnetError(f"cannot listen on {text!r}: the port {port_text!r} is not a number "
                        f"from 0 to 65535; {hint}")
    return Address(host, int(port_text))


def host_allowed(header: str | None, bound: Address) -> bool:
    """Whether a request's ``Host`` header names this server (see the module docstring)."""
    if not header:
        return False
    header = header.strip().lower()
    if header.startswith("["):
        name, sep, rest = header[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return False
        port_text = rest[1:] if rest else "80"
    elif header.count(":") <= 1:
        name, _, port_text = header.partition(":")
        port_text = port_text or "80"
    else:
        return False
    if not port_text.isdigit() or int(port_text) != bound.port:
        return False
    if name == "localhost":
        return bound.ip.is_loopback or bound.ip.is_unspecified
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False           # a name: it could have been rebound
    return bound.ip.is_unspecified or ip == bound.ip


# -- the live view -------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    """One status read: ``status`` is vnetd's answer, None when it did not give one
    (``error`` says why)."""

    at: float                        # the clock's time of the read (monotonic seconds)
    status: Mapping[str, Any] | None
    error: str | None = None

    def lab(self, name: str) -> Mapping[str, Any] | None:
        if self.status is None:
            return None
        for lab in self.status.get("labs", []):
            if lab.get("name") == name:
                found: Mapping[str, Any] = lab
                return found
        return None


def layout_key(lab: Mapping[str, Any] | None) -> str:
    """A short digest of what the picture shows of a live lab (its nodes, NICs, VLANs and
    networks, not its states or counters): the page redraws when it changes."""
    if lab is None:
        return ""
    shape = ([(n.get("name"), n.get("vlan"), n.get("mode")) for n in lab.get("networks", [])],
             [(node.get("name"), node.get("kind"),
               [(nic.get("name"), nic.get("mode"), nic.get("vlans"), nic.get("native"))
                for nic in node.get("nics", [])]) for node in lab.get("nodes", [])])
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def _ports(lab: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(node or "uplink", NIC or interface, the entry with ``port`` and ``counters``)."""
    rows = [(node["name"], nic["name"], nic) for node in lab.get("nodes", [])
            for nic in node.get("nics", [])]
    rows += [("uplink", u.get("ifname") or u["port"], u) for u in lab.get("uplinks", [])]
    return rows


def _drops(counters: Mapping[str, Any]) -> int:
    drops = counters.get("drops") or {}
    return sum(v for v in drops.values() if isinstance(v, int)) if isinstance(
        drops, Mapping) else 0


def _rate(now: Mapping[str, Any] | None, before: Mapping[str, Any] | None, key: str,
          seconds: float) -> float | None:
    if not now or not before or seconds <= 0:
        return None
    a, b = now.get(key), before.get(key)
    if not isinstance(a, int) or not isinstance(b, int) or a < b:
        return None            # a counter that went down: the port was made anew
    return round((a - b) / seconds, 1)


def live_view(lab_name: str, current: Sample | None, previous: Sample | None,
              now: float) -> dict[str, Any]:
    """What ``live.json`` answers: ``state`` is ``ok``, ``waiting`` (no read yet),
    ``unreachable`` (vnetd did not answer), ``stale`` (its last answer is older than
    ``STALE_AFTER``) or ``down`` (vnetd answered, the lab is not up); ``message`` says it in
    words; ``nodes`` and ``ports`` are from the last read that had the lab."""
    view: dict[str, Any] = {"lab": lab_name, "state": "waiting", "age": None,
                            "message": "waiting for vnetd's first answer", "layout": "",
                            "daemon": None, "nodes": [], "ports": []}
    if current is None:
        return view
    view["age"] = round(max(0.0, now - current.at), 1)
    if current.status is None:
        view.update(state="unreachable", message=f"vnetd unreachable: {current.error}")
        return view
    lab = current.lab(lab_name)
    daemon = current.status.get("daemon") or {}
    view["daemon"] = {"pid": daemon.get("pid"), "version": daemon.get("version"),
                      "datapath_restarts": daemon.get("datapath_restarts")}
    if lab is None:
        view.update(state="down", message=f"lab {lab_name} is not up (vnet up FILE brings "
                                          f"it up; this page picks it up then)")
        return view
    if now - current.at > STALE_AFTER:
        view.update(state="stale", message=f"vnetd has not answered for {now - current.at:.0f}"
                                           f" s: the values below are from then")
    else:
        view.update(state="ok", message=f"live: read {view['age']:.1f} s ago, every "
                                        f"{POLL:g} s")
    if lab.get("failed"):
        view["message"] += f"; the lab is not all there: {lab['failed']}"
    earlier = previous.lab(lab_name) if previous is not None else None
    seconds = current.at - previous.at if previous is not None else 0.0
    before = {(n, p): e.get("counters") for n, p, e in _ports(earlier)} if earlier else {}
    view["layout"] = layout_key(lab)
    view["nodes"] = [{"name": n["name"], "kind": n.get("kind"), "state": n.get("state"),
                      "colour": STATE_COLOURS.get(str(n.get("state")), UNKNOWN_COLOUR)}
                     for n in lab.get("nodes", [])]
    for node, nic, entry in _ports(lab):
        counters = entry.get("counters") or {}
        old = before.get((node, nic))
        vlans = ",".join(str(v) for v in entry.get("vlans") or [])
        if entry.get("native"):
            vlans += f" (native {entry['native']})"
        view["ports"].append({
            "node": node, "nic": nic, "port": entry.get("port"), "mode": entry.get("mode"),
            "vlans": vlans, "rx_frames": counters.get("rx_frames"),
            "tx_frames": counters.get("tx_frames"), "rx_bytes": counters.get("rx_bytes"),
            "tx_bytes": counters.get("tx_bytes"), "drops": _drops(counters),
            "rx_rate": _rate(counters, old, "rx_frames", seconds),
            "tx_rate": _rate(counters, old, "tx_frames", seconds)})
    return view


def with_states(g: LabGraph, lab: Mapping[str, Any] | None) -> LabGraph:
    """A topology file's picture with the live lab's node states (the page updates them)."""
    if lab is None:
        return g
    states = {n["name"]: n.get("state") for n in lab.get("nodes", [])}
    nodes = tuple(dataclasses.replace(n, state=states.get(n.name, "missing"))
                  for n in g.nodes)
    return dataclasses.replace(g, nodes=nodes, live=True)


# -- the page ------------------------------------------------------------------------------

STYLE = """
body { font-family: Helvetica, Arial, sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 0.3em 0; }
#status { padding: 0.4em 0.8em; border-radius: 4px; display: inline-block; }
#status.ok { background: #e8f5e9; color: #1b5e20; }
#status.bad { background: #fdecea; color: #b71c1c; font-weight: bold; }
#status.waiting { background: #f4f4f4; }
#picture svg { max-width: 100%; height: auto; overflow: visible; }
table { border-collapse: collapse; margin-top: 1em; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.8em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.moved { background: #fff3c4; }
table.old { color: #999; }
.state { font-weight: bold; }
""".strip()

SCRIPT = """
"use strict";
const POLL_MS = %(poll_ms)d;
const TIMEOUT_MS = 5000;
const shown = document.body.dataset.layout;
const last = new Map();
function text(value) { return value === null || value === undefined ? "-" : String(value); }
function cell(row, value, numeric, moved) {
  const td = row.insertCell();
  td.textContent = text(value);
  if (numeric) td.className = moved ? "num moved" : "num";
  return td;
}
function showStatus(state, message) {
  const el = document.getElementById("status");
  el.textContent = message;
  el.className = state === "ok" ? "ok" : state === "waiting" ? "waiting" : "bad";
  document.getElementById("ports").classList.toggle("old", state !== "ok");
}
function showNodes(nodes) {
  const byTitle = new Map();
  for (const g of document.querySelectorAll("#picture g.node")) {
    const title = g.querySelector("title");
    if (title) byTitle.set(title.textContent, g);
  }
  for (const node of nodes) {
    const g = byTitle.get("node:" + node.name);
    if (!g) continue;
    for (const t of g.querySelectorAll("text")) {
      if (t.textContent.startsWith("[")) t.textContent = "[" + text(node.state) + "]";
    }
    const shape = g.querySelector("polygon, path");
    if (shape) shape.setAttribute("stroke", node.colour);
  }
}
function showPorts(view) {
  const states = new Map(view.nodes.map(n => [n.name, n]));
  const table = document.createElement("tbody");
  for (const p of view.ports) {
    const key = p.node + ":" + p.nic;
    const before = last.get(key);
    const row = table.insertRow();
    row.dataset.port = key;
    cell(row, p.node);
    const node = states.get(p.node);
    const state = cell(row, node ? node.state : "");
    state.className = "state";
    if (node) state.style.color = node.colour;
    cell(row, p.nic); cell(row, p.port); cell(row, p.mode); cell(row, p.vlans);
    for (const k of ["rx_frames", "tx_frames", "rx_rate", "tx_rate", "rx_bytes",
                     "tx_bytes", "drops"]) {
      const moved = before !== undefined && !k.endsWith("_rate") && before[k] !== p[k];
      cell(row, p[k], true, moved);
    }
    last.set(key, p);
  }
  document.querySelector("#ports tbody").replaceWith(table);
}
function show(view) {
  showStatus(view.state, view.message);
  if (view.state !== "ok" && view.state !== "stale") return;
  if (view.layout && view.layout !== shown) { location.reload(); return; }
  showNodes(view.nodes);
  showPorts(view);
}
async function poll() {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
  try {
    const answer = await fetch("live.json", {cache: "no-store", signal: abort.signal});
    if (!answer.ok) throw new Error("HTTP " + answer.status);
    show(await answer.json());
  } catch (err) {
    showStatus("gone", "this page's server (vnet graph --serve) does not answer: " + err);
  } finally {
    clearTimeout(timer);
    setTimeout(poll, POLL_MS);
  }
}
poll();
""".strip() % {"poll_ms": int(POLL * 1000)}

PORT_COLUMNS = ("node", "state", "NIC", "port", "mode", "VLANs", "rx frames", "tx frames",
                "rx/s", "tx/s", "rx bytes", "tx bytes", "drops")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CONTENT_SECURITY_POLICY = (f"default-src 'none'; script-src {_csp_hash(SCRIPT)}; "
                           f"style-src {_csp_hash(STYLE)}; connect-src 'self'; img-src data:; "
                           f"base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _html(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def inline_svg(svg: str) -> str:
    """graphviz's SVG document as an element to put in HTML (no XML prologue, no DOCTYPE)."""
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else ""


def page(lab_name: str, svg: str | None, layout: str, view: Mapping[str, Any]) -> str:
    """The HTML page: ``svg`` is the picture (None: there is none to show yet), ``layout``
    the ``layout_key`` it was drawn from, ``view`` the ``live_view`` to show until the
    script's first update."""
    picture = inline_svg(svg) if svg else (
        "<p>No picture yet: it is drawn once vnetd answers with the lab.</p>")
    head = "".join(f"<th>{_html(c)}</th>" for c in PORT_COLUMNS)
    state = str(view.get("state"))
    css = "ok" if state == "ok" else "waiting" if state == "waiting" else "bad"
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>vnet lab {_html(lab_name)}</title>\n<style>{STYLE}</style></head>\n"
            f"<body data-layout=\"{_html(layout)}\">\n"
            f"<h1>vnet lab {_html(lab_name)}</h1>\n"
            f"<p id=\"status\" class=\"{css}\">{_html(str(view.get('message')))}</p>\n"
            f"<div id=\"picture\">{picture}</div>\n"
            f"<h2>Ports</h2>\n<table id=\"ports\"><thead><tr>{head}</tr></thead>"
            f"<tbody></tbody></table>\n"
            f"<p><small>Read-only; node states and counters from vnetd's status, every "
            f"{POLL:g} s; the picture is redrawn when the lab's nodes, NICs or VLANs "
            f"change.</small></p>\n"
            f"<script>{SCRIPT}</script>\n</body></html>\n")


# -- requests ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


COMMON_HEADERS = (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
                  ("Referrer-Policy", "no-referrer"), ("X-Frame-Options", "DENY"))
PAGE_PATHS = ("/", "/index.html")
LIVE_PATH = "/live.json"
SVG_PATH = "/graph.svg"


def _text(status: int, text: str, *headers: tuple[str, str]) -> Response:
    return Response(status, "text/plain; charset=utf-8", (text + "\n").encode(),
                    (*COMMON_HEADERS, *headers))


def respond(method: str, target: str, host: str | None, bound: Address,
            render_page: Callable[[], str], render_svg: Callable[[], str | None],
            live: Callable[[], Mapping[str, Any]]) -> Response:
    """The answer to one request (``target``: the request line's path and query).  The
    callables make the bodies; an exception they raise is the caller's (a 500)."""
    if not host_allowed(host, bound):
        return _text(403, f"forbidden: this server answers requests for "
                          f"{bound.authority()} only (the Host header said {host!r})")
    if method not in ("GET", "HEAD"):
        return _text(405, f"method {method} not allowed: this server is read-only "
                          f"(GET and HEAD only)", ("Allow", "GET, HEAD"))
    path = target.split("?", 1)[0].split("#", 1)[0]
    if path in PAGE_PATHS:
        return Response(200, "text/html; charset=utf-8", render_page().encode(),
                        (*COMMON_HEADERS, ("Content-Security-Policy",
                                           CONTENT_SECURITY_POLICY)))
    if path == LIVE_PATH:
        return Response(200, "application/json", json.dumps(live()).encode(), COMMON_HEADERS)
    if path == SVG_PATH:
        svg = render_svg()
        if svg is None:
            return _text(503, "no picture yet: vnetd has not answered with the lab")
        return Response(200, "image/svg+xml", svg.encode(),
                        (*COMMON_HEADERS, ("Content-Security-Policy", "default-src 'none'")))
    return _text(404, f"not found: {path} (this server has {', '.join(_paths())})")


def _paths() -> Sequence[str]:
    return (*PAGE_PATHS[:1], LIVE_PATH, SVG_PATH)
