"""``vnet graph LAB --serve`` against a real lab: the CLI serves inside the test host's
namespace on its default address, its live.json counts the frames the test sends, headless
Chromium (Debian's ``chromium``) runs the page's script there too, and its DOM and its
screenshot show the lab's nodes and the live counters; a page kept open (DevTools protocol on
a pipe) follows new frames and a node gone missing without a reload; vnetd gone, the page
says so; only GET and HEAD, only for the bound Host; Ctrl-C stops it cleanly.

Topology ``topologies/switch.yaml`` (lab ``sw``): a1, a2 access in blue; b1 access in green;
t1 and t2 trunks.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from tests.conftest import needs_root
from vnet.host import netns
from vnet.observe.graph import STATE_COLOURS
from vnet.observe.live import DEFAULT_PORT
from vnet.testing import Lab, TestHost, wait_until
from vnet.testing.lab import popen_in_netns, run_in_netns

pytestmark = [needs_root, pytest.mark.vnet_topology("topologies/switch.yaml")]

NODES = ("a1", "a2", "b1", "t1", "t2")
SENT = 25
WINDOW = (1400, 1100)


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium; .ci/install does)")
    return found


def request(host: TestHost, path: str, method: str = "GET",
            host_header: str = f"127.0.0.1:{DEFAULT_PORT}", body: bytes = b""
            ) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request to the server in ``host``'s namespace (the socket is made there)."""
    with netns.entered(host.name):
        sock = socket.create_connection(("127.0.0.1", DEFAULT_PORT), timeout=10)
    conn = http.client.HTTPConnection("127.0.0.1", DEFAULT_PORT, timeout=10)
    conn.sock = sock
    try:
        conn.putrequest(method, path, skip_host=True)
        conn.putheader("Host", host_header)
        if body:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        answer = conn.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        conn.close()


def live(host: TestHost) -> dict[str, Any]:
    status, _, body = request(host, "/live.json")
    assert status == 200, body
    view: dict[str, Any] = json.loads(body)
    return view


def answering(host: TestHost) -> bool:
    try:
        return bool(live(host)["state"] == "ok")
    except OSError:
        return False      # not listening yet


@pytest.fixture
def served(vnet_lab: Lab) -> Iterator[subprocess.Popen[str]]:
    """``vnet graph sw --serve`` (the default address) running in the host's namespace."""
    host = vnet_lab.host
    # Not given the host's --state-dir: stop_daemon kills what names it on its command line.
    process: subprocess.Popen[str] = popen_in_netns(
        host.name, [sys.executable, "-m", "vnet.cli", "--socket", host.socket, "graph",
                    vnet_lab.name, "--serve"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: process.poll() is not None or answering(host),
                   message="vnet graph --serve to answer live.json with the lab")
        assert process.poll() is None, process.communicate()
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def browse(host: TestHost, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium in the host's namespace on the page; the virtual time budget lets
    the page's script poll live.json a few times before the DOM or screenshot is taken."""
    done = run_in_netns(host.name, [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        f"--user-data-dir={profile}", "--virtual-time-budget=5000",
        f"--window-size={WINDOW[0]},{WINDOW[1]}", *args,
        f"http://127.0.0.1:{DEFAULT_PORT}/"], timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


class OpenPage:
    """A page kept open in headless Chromium (in the host's namespace), read through the
    DevTools protocol on a pipe (``--remote-debugging-pipe``: commands on the browser's fd
    3, answers on its fd 4, each a JSON text ended by a NUL)."""

    def __init__(self, host: TestHost, profile: Path) -> None:
        to_browser, self._commands = os.pipe()
        self._answers, from_browser = os.pipe()
        # fds 3 and 4 of the browser, whatever numbers (above 4) the pipes got here
        assert min(to_browser, from_browser) > 4
        shell = f'exec "$0" "$@" 3<&{to_browser} 4>&{from_browser}'
        self.process = popen_in_netns(host.name, [
            "bash", "-c", shell, chromium(), "--headless", "--no-sandbox", "--disable-gpu",
            "--no-first-run", f"--user-data-dir={profile}", "--remote-debugging-pipe",
            f"--window-size={WINDOW[0]},{WINDOW[1]}", f"http://127.0.0.1:{DEFAULT_PORT}/"],
            pass_fds=(to_browser, from_browser), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self._next = 0
        self._buffer = b""
        try:
            pages = wait_until(lambda: [t for t in self.call("Target.getTargets")[
                "targetInfos"] if t["type"] == "page"], message="Chromium to open the page")
            self.session = self.call("Target.attachToTarget", targetId=pages[0]["targetId"],
                                     flatten=True)["sessionId"]
        except BaseException:
            self.close()
            raise

    def call(self, method: str, session: str | None = None, **params: Any) -> Any:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:                      # events come in between: skip them
            answer = self._read()
            if answer.get("id") == self._next:
                assert "error" not in answer, answer
                return answer["result"]

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._answers], [], [], 60)
            assert ready, "Chromium did not answer within 60 s"
            chunk = os.read(self._answers, 1 << 16)
            assert chunk, "Chromium closed its DevTools pipe"
            self._buffer += chunk
        text, self._buffer = self._buffer.split(b"\0", 1)
        found: dict[str, Any] = json.loads(text)
        return found

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page, as it is now."""
        result = self.call("Runtime.evaluate", session=self.session, expression=expression,
                           returnByValue=True)["result"]
        return result.get("value")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._commands)
        with contextlib.suppress(OSError):
            os.close(self._answers)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


ROW = ("[...document.querySelectorAll('#ports tr')].filter(r => r.dataset.port == %r)"
       ".map(r => [...r.cells].map(c => c.textContent))[0] || null")
NODE_TEXT = ("[...document.querySelectorAll('#picture g.node')].filter(g => "
             "g.querySelector('title').textContent == %r).map(g => g.textContent)[0] || null")


def test_an_open_page_follows_the_lab(vnet_lab: Lab, served: subprocess.Popen[str],
                                      tmp_path: Path) -> None:
    """Without a reload: the counters of frames sent after the page opened, and a node
    whose namespace went away shown as missing, in the table and in the picture."""
    host = vnet_lab.host
    page = OpenPage(host, tmp_path / "profile")
    try:
        shown = wait_until(lambda: page.evaluate(ROW % "a1:eth0"),
                           message="the page's script to fill the ports table")
        assert shown[:3] == ["a1", "running", "eth0"]
        loads = page.evaluate("performance.getEntriesByType('navigation').length")
        before = int(shown[6])
        vnet_lab.dataplane.send("a1:eth0", Ether(dst="ff:ff:ff:ff:ff:ff",
                                                 src="02:00:00:00:aa:02") / Raw(b"x" * 50),
                                count=SENT)
        wait_until(lambda: int(page.evaluate(ROW % "a1:eth0")[6]) >= before + SENT,
                   message=lambda: f"the open page to count {SENT} more frames in on a1: "
                                   f"{page.evaluate(ROW % 'a1:eth0')}")
        assert "[running]" in page.evaluate(NODE_TEXT % "node:b1")
        netns.remove(vnet_lab.netns("b1"))   # the node's namespace is gone: 'missing'
        wait_until(lambda: page.evaluate(ROW % "b1:eth0")[1] == "missing",
                   message=lambda: f"the table to show b1 missing: "
                                   f"{page.evaluate(ROW % 'b1:eth0')}")
        wait_until(lambda: "[missing]" in page.evaluate(NODE_TEXT % "node:b1"),
                   message="the picture to show b1 missing")
        stroke = page.evaluate("[...document.querySelectorAll('#picture g.node')].filter(g =>"
                               " g.querySelector('title').textContent == 'node:b1')[0]"
                               ".querySelector('path, polygon').getAttribute('stroke')")
        assert stroke == STATE_COLOURS["missing"]
        assert page.evaluate("performance.getEntriesByType('navigation').length") == loads
        assert page.evaluate("document.getElementById('status').className") == "ok"
    finally:
        page.close()


def table_rows(dom: str) -> dict[str, list[str]]:
    """The ports table as the script left it: "node:nic" -> its cells' texts."""
    rows = {}
    for port, cells in re.findall(r'<tr data-port="([^"]+)">(.*?)</tr>', dom, re.DOTALL):
        rows[port] = re.findall(r"<td[^>]*>(.*?)</td>", cells)
    return rows


def test_the_page_shows_the_live_lab(vnet_lab: Lab, served: subprocess.Popen[str],
                                     tmp_path: Path) -> None:
    chromium()
    host = vnet_lab.host
    first = {(p["node"], p["nic"]): p for p in live(host)["ports"]}
    assert {n for n, _ in first} == {*NODES}
    before = first[("a1", "eth0")]["rx_frames"]
    frame = Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:aa:01") / Raw(b"serve" * 10)
    vnet_lab.dataplane.send("a1:eth0", frame, count=SENT)

    def counted() -> dict[tuple[str, str], Any] | None:
        ports = {(p["node"], p["nic"]): p for p in live(host)["ports"]}
        return ports if ports[("a1", "eth0")]["rx_frames"] >= before + SENT else None

    ports = wait_until(counted, message=lambda: f"live.json to count {SENT} more frames "
                                                f"in on a1: {live(host)['ports']}")
    assert ports is not None
    assert ports[("a2", "eth0")]["tx_frames"] >= SENT      # flooded in blue
    assert ports[("t1", "eth0")]["tx_frames"] >= SENT      # tagged on the trunk
    assert ports[("b1", "eth0")]["tx_frames"] < SENT        # not in green
    view = live(host)
    assert {n["name"]: n["state"] for n in view["nodes"]} == dict.fromkeys(NODES, "running")

    dom = browse(host, tmp_path / "profile", "--dump-dom").stdout
    rows = table_rows(dom)
    assert set(rows) == {f"{n}:eth0" for n in NODES}, dom[-3000:]
    a1 = rows["a1:eth0"]
    assert a1[:3] == ["a1", "running", "eth0"]
    assert int(a1[6]) >= before + SENT                      # rx frames, as the script put it
    assert int(rows["a2:eth0"][7]) >= SENT                  # tx frames
    assert re.search(r'<p id="status" class="ok">live: read [\d.]+ s ago', dom), dom[:3000]
    for node in NODES:                                      # the picture has each node
        assert f"<title>node:{node}</title>" in dom
        assert f">{node}</text>" in dom

    shot = tmp_path / "page.png"
    browse(host, tmp_path / "profile", f"--screenshot={shot}")
    check_screenshot(shot)
    keep = os.environ.get("VNET_TEST_ARTIFACTS")    # to look at it (docs/graph-serve.png)
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "graph-serve.png")


def rgb(hex_colour: str) -> tuple[int, int, int]:
    return int(hex_colour[1:3], 16), int(hex_colour[3:5], 16), int(hex_colour[5:7], 16)


def regions(pixels: set[tuple[int, int]], least: int) -> list[int]:
    """The sizes of the 4-connected regions of ``pixels`` of at least ``least`` pixels."""
    sizes, todo = [], set(pixels)
    while todo:
        stack, size = [todo.pop()], 0
        while stack:
            x, y = stack.pop()
            size += 1
            for near in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
                if near in todo:
                    todo.remove(near)
                    stack.append(near)
        if size >= least:
            sizes.append(size)
    return sizes


def check_screenshot(path: Path) -> None:
    """A PNG of the window's size, not blank, with one filled box per namespace node (the
    fill colour of ``graph``'s namespace nodes, the letters' holes left out), the running
    state's green (outlines) and the blue network drawn in."""
    from PIL import Image

    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), data[:16]
    image = Image.open(io.BytesIO(data)).convert("RGB")
    assert image.size == WINDOW
    colours = image.getcolors(maxcolors=1 << 22)
    assert colours is not None
    counts = {colour: n for n, colour in colours}
    total = WINDOW[0] * WINDOW[1]
    assert counts.get((255, 255, 255), 0) < total * 0.97, "the page is blank"
    assert len(counts) > 50, "too few colours for a drawn picture"
    assert counts.get(rgb(STATE_COLOURS["running"]), 0) > 200, "nothing drawn as running"
    assert counts.get(rgb("#1f77b4"), 0) > 200, "the blue network is not drawn"
    fill = rgb("#eef4fb")          # graph._node_line: a namespace node's fill
    raw, width = image.tobytes(), WINDOW[0]
    boxes = {(i % width, i // width) for i in range(total)
             if (raw[3 * i], raw[3 * i + 1], raw[3 * i + 2]) == fill}
    assert len(regions(boxes, least=1000)) == len(NODES), "not one box per node"


def test_read_only_for_its_own_host_and_says_when_vnetd_is_gone(
        vnet_lab: Lab, served: subprocess.Popen[str], tmp_path: Path) -> None:
    host = vnet_lab.host
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
        status, headers, body = request(host, "/live.json", method, body=b"x" * 100_000)
        assert (status, headers.get("Allow")) == (405, "GET, HEAD"), body
    status, _, body = request(host, "/", host_header=f"rebound.example:{DEFAULT_PORT}")
    assert status == 403 and b"lab" not in body and b"Traceback" not in body
    status, headers, body = request(host, "/", "HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 1000
    assert "script-src 'sha256-" in headers["Content-Security-Policy"]
    status, _, _ = request(host, "/", host_header=f"localhost:{DEFAULT_PORT}")
    assert status == 200
    assert request(host, "/../../etc/passwd")[0] == 404

    host.stop_daemon()                   # vnetd and its datapath stop; the lab stays recorded
    gone = wait_until(lambda: (v := live(host))["state"] == "unreachable" and v,
                      message="live.json to say vnetd is unreachable")
    assert gone["message"].startswith("vnetd unreachable: vnetd is not running")
    status, _, page = request(host, "/")
    assert status == 200 and b"vnetd unreachable" in page
    browser = shutil.which("chromium") is not None    # the rest is checked without one too
    if browser:
        dom = browse(host, tmp_path / "profile", "--dump-dom").stdout
        assert re.search(r'<p id="status" class="bad">vnetd unreachable', dom), dom[:3000]

    host.start_daemon()                  # back, with the lab: live again
    wait_until(lambda: live(host)["state"] == "ok", message="live.json to be live again")

    served.send_signal(signal.SIGINT)    # Ctrl-C
    out, err = served.communicate(timeout=30)
    assert served.returncode == 0, err
    assert f"on http://127.0.0.1:{DEFAULT_PORT}/ (read-only; Ctrl-C stops)" in out
    assert out.rstrip().endswith("stopped") and "Traceback" not in err
    with pytest.raises(OSError):
        request(host, "/live.json")
    if not browser:
        chromium()        # skips, saying what is missing (a failure on CI)
