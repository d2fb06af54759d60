"""Running the checks of ``vnet test`` in the lab's namespace nodes, all at once.

Each check is bounded by its expectation's window: a positive one stops at the first reply,
a negative one watches the whole window and passes only if nothing came back in it.

* ping: the system's ``ping`` run inside the node as ``vnet exec`` runs commands
  (``netns.node_preexec``); its summary line is the evidence.  Every ping is started from
  the main thread before any other thread exists (a ``preexec_fn`` is not safe beside
  threads); threads only wait for them.
* tcp: a socket made inside the node's namespace connects to the port, again and again
  until it connects or the window ends (a refused connection may be a server still starting).
* arp: a packet socket on the node's NIC sends an ARP request (tagged with ``vlan`` from a
  trunk; sender address 0.0.0.0, so no node learns anything from it) and waits for the
  target's reply, in that VLAN.
"""

from __future__ import annotations

import math
import select
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from ipaddress import IPv4Address

from vnet.errors import NetnsError
from vnet.host import afpacket, netns
from vnet.observe.plan import Probe
from vnet.observe.results import Outcome, failed_to_run, judged
from vnet.packet.ethernet import BROADCAST, insert_tag, mac_to_bytes, mac_to_str, make_tci, tci_vid

PING_INTERVAL = 0.2      # seconds between echo requests while a window is open
PING_GRACE = 30.0        # seconds past its window before a ping that hangs is given up
TCP_RETRY = 0.1          # seconds between connection attempts that were refused
MAX_PARALLEL = 16
ETH_P_ARP = 0x0806
_ARP = struct.Struct("!HHBBH6s4s6s4s")


def run_all(probes: Sequence[Probe],
            checked: Callable[[int, int], None] | None = None) -> list[Outcome]:
    """Every probe's outcome, in the given order; they run in parallel.  ``checked(done,
    total)`` is called (from this thread) each time one more outcome is known."""
    outcomes: dict[int, Outcome] = {}
    pings: dict[int, tuple[subprocess.Popen[str], float]] = {}
    for index, probe in enumerate(probes):
        if probe.problem is not None:
            outcomes[index] = failed_to_run(probe.expectation, probe.problem)
        elif probe.expectation.check == "ping":
            started = start_ping(probe)
            if isinstance(started, Outcome):
                outcomes[index] = started
            else:
                pings[index] = started
    futures: dict[int, Future[Outcome]] = {}
    with ThreadPoolExecutor(max_workers=MAX_PARALLEL) as pool:
        for index, probe in enumerate(probes):
            if index in pings:
                futures[index] = pool.submit(finish_ping, probe, *pings[index])
            elif index not in outcomes:
                check = tcp_check if probe.expectation.check == "tcp" else arp_check
                futures[index] = pool.submit(_guarded, check, probe)
        if checked is not None:
            for done in range(1, len(outcomes) + 1):   # those that could not even start
                checked(done, len(probes))
        index_of = {future: index for index, future in futures.items()}
        for future in as_completed(index_of):
            outcomes[index_of[future]] = future.result()
            if checked is not None:
                checked(len(outcomes), len(probes))
    return [outcomes[i] for i in range(len(probes))]


def _guarded(check: Callable[[Probe], Outcome], probe: Probe) -> Outcome:
    try:
        return check(probe)
    except NetnsError as err:
        return failed_to_run(probe.expectation, f"node {probe.expectation.source}: {err}")
    except OSError as err:
        return failed_to_run(probe.expectation, f"{probe.expectation.check} in node "
                             f"{probe.expectation.source}: {err.strerror or err}")


# -- ping ---------------------------------------------------------------------------------

def ping_command(probe: Probe) -> list[str]:
    """One reply ends it (``-c 1`` counts replies when a deadline ``-w`` is given); without
    one it ends at the window's end, in whole seconds for ping (rounded up)."""
    window = ping_window(probe.expectation.window)
    return ["ping", "-n", "-q", "-c", "1", "-i", str(PING_INTERVAL), "-w", str(window),
            "-I", probe.ifname, probe.address]


def ping_window(window: float) -> int:
    return max(1, math.ceil(window))


def start_ping(probe: Probe) -> tuple[subprocess.Popen[str], float] | Outcome:
    try:
        with netns.node_preexec(probe.netns) as enter:
            process = subprocess.Popen(ping_command(probe), preexec_fn=enter, text=True,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT)
    except NetnsError as err:
        return failed_to_run(probe.expectation, f"node {probe.expectation.source}: {err}")
    except FileNotFoundError:
        return failed_to_run(probe.expectation, "ping is not installed: install iputils-ping")
    return process, time.monotonic()


def finish_ping(probe: Probe, process: subprocess.Popen[str], started: float) -> Outcome:
    try:
        output, _ = process.communicate(timeout=probe.expectation.window + PING_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return failed_to_run(probe.expectation, f"ping did not end within "
                             f"{probe.expectation.window + PING_GRACE:g} s of a "
                             f"{probe.expectation.window:g} s window")
    seconds = time.monotonic() - started
    reply = process.returncode == 0
    evidence = ping_evidence(output)
    if not reply:
        evidence = f"no reply within {ping_window(probe.expectation.window)} s: {evidence}"
    return judged(probe.expectation, reply, seconds, evidence)


def ping_evidence(output: str) -> str:
    """The line that says what happened: ``1 packets transmitted, 1 received, ...`` (with the
    round trip time when there was one), or ping's own complaint."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    summary = next((line for line in lines if "packets transmitted" in line), None)
    if summary is None:
        return lines[-1] if lines else "ping said nothing"
    rtt = next((line for line in lines if line.startswith(("rtt", "round-trip"))), None)
    if rtt is not None and "=" in rtt:
        average = rtt.split("=")[1].strip().split("/")[1]
        return f"{summary}; rtt {average} ms"
    return summary


# -- tcp ----------------------------------------------------------------------------------

def tcp_check(probe: Probe) -> Outcome:
    e = probe.expectation
    assert e.port is not None
    started = time.monotonic()
    deadline = started + e.window
    attempts, last = 0, "no answer"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        attempts += 1
        with netns.entered(probe.netns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(remaining)
            sock.connect((probe.address, e.port))
            seconds = time.monotonic() - started
            return judged(e, True, seconds, f"connected to {probe.address}:{e.port} in "
                          f"{seconds * 1000:.1f} ms (attempt {attempts})")
        except ConnectionRefusedError:
            last = "refused"
            time.sleep(min(TCP_RETRY, max(0.0, deadline - time.monotonic())))
        except TimeoutError:
            last = "no answer"
        except OSError as err:
            last = err.strerror or str(err)
            time.sleep(min(TCP_RETRY, max(0.0, deadline - time.monotonic())))
        finally:
            sock.close()
    seconds = time.monotonic() - started
    return judged(e, False, seconds, f"no connection to {probe.address}:{e.port} within "
                  f"{e.window:g} s ({attempts} attempts, last: {last})")


# -- arp ----------------------------------------------------------------------------------

def arp_request(source_mac: str, target: str, vlan: int | None) -> bytes:
    """A broadcast ARP request for ``target`` from 0.0.0.0 (an RFC 5227 probe: it is
    answered but teaches nobody a neighbour), padded to the minimum frame, tagged if asked."""
    mac = mac_to_bytes(source_mac)
    arp = _ARP.pack(1, 0x0800, 6, 4, 1, mac, bytes(4), bytes(6), IPv4Address(target).packed)
    frame = (BROADCAST + mac + struct.pack("!H", ETH_P_ARP) + arp).ljust(60, b"\0")
    return insert_tag(frame, make_tci(vlan)) if vlan is not None else frame


def arp_reply_from(frame: bytes, tci: int | None, target: str) -> tuple[str, int | None] | None:
    """(MAC, VLAN or None) when ``frame`` (as received: outer tag in ``tci``) is ``target``'s
    ARP reply, else None."""
    if len(frame) < 14 + _ARP.size or frame[12:14] != struct.pack("!H", ETH_P_ARP):
        return None
    _hw, _proto, _hl, _pl, op, sha, spa, _tha, _tpa = _ARP.unpack_from(frame, 14)
    if op != 2 or spa != IPv4Address(target).packed:
        return None
    return mac_to_str(sha), tci_vid(tci) if tci is not None else None


def arp_check(probe: Probe) -> Outcome:
    e = probe.expectation
    options = afpacket.PacketOptions(vnet_hdr=False, promiscuous=False, rcvbuf=1 << 20,
                                     sndbuf=1 << 20)
    sock = afpacket.open_packet_socket(probe.ifname, options, netns_name=probe.netns)
    started = time.monotonic()
    deadline = started + e.window
    try:
        sock.send(arp_request(probe.mac, probe.address, e.vlan))
        next_send = started + 1.0
        while (now := time.monotonic()) < deadline:
            if now >= next_send:  # a lost request (a port still coming up) is asked again
                sock.send(arp_request(probe.mac, probe.address, e.vlan))
                next_send = now + 1.0
            ready, _, _ = select.select([sock], [], [], min(deadline, next_send) - now)
            if not ready:
                continue
            while True:
                try:
                    _hdr, frame, tci = afpacket.recv_frame(sock, vnet_hdr=False)
                except BlockingIOError:
                    break
                reply = arp_reply_from(frame, tci, probe.address)
                if reply is None:
                    continue
                mac, vlan = reply
                # A reply in another VLAN may answer another check's request on this NIC
                # (checks run in parallel): only a reply in this check's VLAN counts.
                if vlan == e.vlan:
                    tagged = f"tagged {vlan}" if vlan is not None else "untagged"
                    seconds = time.monotonic() - started
                    return judged(e, True, seconds, f"{probe.address} is-at {mac} ({tagged}) "
                                  f"after {seconds * 1000:.1f} ms")
    finally:
        sock.close()
    where = f" in VLAN {e.vlan}" if e.vlan is not None else ""
    return judged(e, False, time.monotonic() - started,
                  f"no ARP reply from {probe.address}{where} within {e.window:g} s")


# -- addresses that only the running lab knows ---------------------------------------------

def live_ipv4(netns_name: str, nic: str) -> str | None:
    """The first IPv4 address of ``nic`` inside the namespace now (a DHCP lease), or None."""
    try:
        with netns.open_iproute(netns_name) as ipr:
            links = ipr.link_lookup(ifname=nic)
            if not links:
                return None
            for message in ipr.get_addr(family=socket.AF_INET, index=links[0]):
                address = message.get_attr("IFA_ADDRESS")
                if address:
                    return str(address)
    except (NetnsError, OSError):
        return None
    return None
