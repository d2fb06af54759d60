"""The HTTP adapter of ``vnet graph --serve``: a stdlib threading HTTP server in the CLI's
process and a thread that reads vnetd's status every ``live.POLL`` seconds.  What is
answered, and why, is ``vnet.observe.live``'s; here only sockets, threads and the clock."""

from __future__ import annotations

import http.server
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from vnet.errors import VnetError
from vnet.observe import graph, live

REQUEST_TIMEOUT = 10.0   # seconds a request may take to arrive
MAX_BODY = 1 << 20       # bytes of a (refused) request's body read before answering


class Poller:
    """The last two status reads, renewed in a background thread."""

    def __init__(self, fetch: Callable[[], Mapping[str, Any]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.current: live.Sample | None = None
        self.previous: live.Sample | None = None
        self._thread = threading.Thread(target=self._run, name="status-poller", daemon=True)

    def read_once(self) -> None:
        status: Mapping[str, Any] | None = None
        error = None
        try:
            status = self._fetch()
        except VnetError as err:     # vnetd not running, not answering, refusing
            error = str(err)
        sample = live.Sample(self._clock(), status, error)   # as of its answer
        with self._lock:
            self.previous, self.current = self.current, sample

    def samples(self) -> tuple[live.Sample | None, live.Sample | None]:
        with self._lock:
            return self.current, self.previous

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(live.POLL):
            self.read_once()

    def stop(self) -> None:
        self._stop.set()


class LivePage:
    """The bodies: the page, the SVG (graphviz runs again only when the DOT text changed)
    and the live view."""

    def __init__(self, lab: str, poller: Poller, picture: Callable[[Mapping[str, Any] | None],
                 graph.LabGraph | None], render: Callable[[str], str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lab = lab
        self.poller = poller
        self._picture = picture
        self._render = render
        self._clock = clock
        self._lock = threading.Lock()
        self._drawn: tuple[str, str] | None = None     # (DOT text, its SVG)

    def svg(self) -> str | None:
        return self._svg_and_layout()[0]

    def _svg_and_layout(self) -> tuple[str | None, str]:
        current, _ = self.poller.samples()
        lab = current.lab(self.lab) if current is not None else None
        picture = self._picture(lab)
        if picture is None:
            return None, ""
        dot = graph.to_dot(picture)
        with self._lock:
            if self._drawn is None or self._drawn[0] != dot:
                self._drawn = (dot, self._render(dot))
            return self._drawn[1], live.layout_key(lab)

    def view(self) -> dict[str, Any]:
        current, previous = self.poller.samples()
        return live.live_view(self.lab, current, previous, self._clock())

    def page(self) -> str:
        svg, layout = self._svg_and_layout()
        return live.page(self.lab, svg, layout, self.view())


def make_server(bound: live.Address, content: LivePage) -> http.server.ThreadingHTTPServer:
    """Bind (raises ``VnetError`` when it cannot); ``serve_forever`` answers."""

    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "vnet-graph"
        timeout = REQUEST_TIMEOUT      # a client that stalls does not keep its thread

        def version_string(self) -> str:
            return self.server_version

        def parse_request(self) -> bool:
            # Every method is answered here, so that any other than GET and HEAD gets a
            # 405 (the base class would dispatch to do_METHOD, or answer 501).
            if not super().parse_request():
                return False
            self._answer()
            return False

        def _answer(self) -> None:
            length = self.headers.get("Content-Length", "")
            if length.isdigit() and int(length) <= MAX_BODY:
                self.rfile.read(int(length))   # unread, closing would reset the connection
            try:
                response = live.respond(self.command, self.path, self.headers.get("Host"),
                                        actual, content.page, content.svg, content.view)
            except Exception as err:   # a client gets a line, never a traceback
                print(f"vnet graph --serve: {self.command} {self.path}: "
                      f"{type(err).__name__}: {err}", file=sys.stderr)
                text = err if isinstance(err, VnetError) else "internal error (see the " \
                                                               "server's output)"
                response = live.Response(500, "text/plain; charset=utf-8",
                                         f"{text}\n".encode(), live.COMMON_HEADERS)
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for name, value in response.headers:
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass    # a page polls every second: no line per request

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if bound.ip.version == 6 else socket.AF_INET

    try:
        server = Server((bound.host, bound.port), Handler)
    except OSError as err:
        raise VnetError(f"cannot listen on {bound.authority()}: {err.strerror or err}; give "
                        f"another address with --serve HOST:PORT") from None
    actual = live.Address(bound.host, server.server_address[1])   # port 0: the one taken
    return server


def serve(bound: live.Address, content: LivePage, announce: Callable[[str], None]) -> None:
    """Answer until Ctrl-C (KeyboardInterrupt), then close the socket and stop polling."""
    server = make_server(bound, content)
    content.poller.read_once()
    content.poller.start()
    try:
        announce(live.Address(bound.host, int(server.server_address[1])).url())
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        content.poller.stop()
        server.server_close()
