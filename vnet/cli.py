"""``vnet``: the command line.  Validates topology files locally, talks to vnetd for the rest.

Exit status: 0 on success, 1 when vnet refused (bad topology, error from vnetd), 2 on bad
usage (argparse).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from vnet import jsonlines
from vnet.cli_progress import ProgressLine
from vnet.daemon.defaults import (
    API_VERSION,
    DEFAULT_SOCKET,
    DEFAULT_STATE_DIR,
    MAX_REQUEST,
    describe_size,
)
from vnet.errors import DaemonError, TopologyError, VnetError, describe_os_error

if TYPE_CHECKING:
    from vnet.topology.model import Topology

# vnet.topology (~0.1 s of imports) is imported where a file is read here: ``vnet up`` to a
# running vnetd sends the file unread, and vnetd, which has it imported, checks it.

DAEMON_START_TIMEOUT = 15.0
DAEMON_EXIT_TIMEOUT = 10.0
CONNECT_PATIENCE = 3.0   # seconds a refused or queue-full connect to vnetd is retried
REPLY_TIMEOUT = 300.0    # seconds to wait for vnetd's reply (an up of VMs takes a while)


class NotRunning(DaemonError):
    """Nothing listens on vnetd's socket (or there is none)."""


class StoppedBeforeAnswering(DaemonError):
    """vnetd hung up before its reply: it was killed or crashed while it had the request."""


class Client:
    """Requests to one vnetd; starts it on demand for ``up``.

    Every way the conversation can fail is said in words, with what to do: vnetd not
    running, busy (its queue of waiting connections full), stopped before it answered (the
    next ``up`` or ``down`` finishes the job from vnetd's record), too slow, or a request
    too big to send."""

    def __init__(self, socket_path: str, state_dir: str, netns_name: str | None) -> None:
        self.socket_path = socket_path
        self.state_dir = state_dir
        self.netns_name = netns_name

    def call(self, op: str, on_progress: Callable[[Any], None] | None = None,
             **args: Any) -> Any:
        """``op``'s result; ``on_progress``: asks for vnetd's progress events, and hears
        them (``up``, ``down``)."""
        request = {"op": op, **args, **({"progress": True} if on_progress else {})}
        try:
            reply = self._exchange(request, retry_refused=True, on_progress=on_progress)
        except NotRunning:
            # A down finishes a lab that vnetd has a record of, even when the vnetd that
            # `vnet up` started is gone (killed, or a reboot): start one for it.
            if op != "down" or not self._has_record(str(args.get("lab"))):
                raise
            self.ensure_daemon()
            reply = self._exchange(request, retry_refused=True, on_progress=on_progress)
        check_api_version(reply)
        if not reply.get("ok"):
            raise DaemonError(str(reply.get("error")))
        return reply.get("result")

    def open(self, retry_refused: bool = True) -> socket.socket:
        """A connection to vnetd (for a session: ``cli_attach``), or a ``DaemonError``
        saying why there is none."""
        try:
            return self._connect(retry_refused)
        except OSError as err:
            raise self._failure(err, "session") from None

    def _connect(self, retry_refused: bool) -> socket.socket:
        retry = (BlockingIOError, ConnectionRefusedError) if retry_refused else (
            BlockingIOError,)
        return jsonlines.connect(self.socket_path, REPLY_TIMEOUT, CONNECT_PATIENCE, retry)

    def _exchange(self, request: dict[str, Any], retry_refused: bool,
                  on_progress: Callable[[Any], None] | None = None) -> dict[str, Any]:
        """vnetd's reply to ``request``.  A connect refused (vnetd restarting) or finding
        vnetd's queue full is retried with back-off for ``CONNECT_PATIENCE`` seconds."""
        check_size(request)
        try:
            with self._connect(retry_refused) as sock:
                return jsonlines.exchange(sock, request, on_progress)
        except (OSError, jsonlines.NoReply) as err:
            raise self._failure(err, request["op"]) from None

    def open_stream(self, op: str, **args: Any) -> tuple[Any, socket.socket, BinaryIO]:
        """For an operation whose reply is followed by a stream (``capture``): the reply's
        result, and the connection left open with the reader that holds what follows."""
        request = {"op": op, **args}
        try:
            sock = self._connect(retry_refused=True)
            try:
                sock.sendall(jsonlines.encode(request))
                reader = sock.makefile("rb")
                line = reader.readline(jsonlines.MAX_LINE)
                if not line.endswith(b"\n"):
                    raise jsonlines.NoReply("no reply")
                reply = jsonlines.decode(line)
            except BaseException:
                sock.close()
                raise
        except (OSError, jsonlines.NoReply) as err:
            raise self._failure(err, op) from None
        check_api_version(reply)
        if not reply.get("ok"):
            sock.close()
            raise DaemonError(str(reply.get("error")))
        sock.settimeout(None)
        return reply.get("result"), sock, reader

    def _failure(self, err: OSError | jsonlines.NoReply, op: str) -> DaemonError:
        """Every way talking to vnetd fails, said in words."""
        if isinstance(err, FileNotFoundError | ConnectionRefusedError):
            return NotRunning(f"vnetd is not running (no answer on {self.socket_path}); "
                              f"start it with 'systemctl start vnetd' or 'vnet up FILE'")
        if isinstance(err, BlockingIOError):
            return DaemonError(f"vnetd is not taking connections on {self.socket_path}: its "
                               f"queue of waiting connections stayed full for "
                               f"{CONNECT_PATIENCE:g} s; it is overloaded or stuck (see its "
                               f"log); try again")
        if isinstance(err, jsonlines.NoReply):
            return StoppedBeforeAnswering(stopped_before_answering(op))
        if isinstance(err, TimeoutError):
            return DaemonError(f"vnetd did not answer this {op} within {REPLY_TIMEOUT:.0f} s; "
                               f"it may still be at it: see 'vnet status' and its log")
        if isinstance(err, PermissionError):
            return DaemonError(f"{self.socket_path}: permission denied: only root and the "
                               f"members of vnetd's access group (access.group in its "
                               f"config, default 'vnet') may connect; run vnet as root, or "
                               f"ask an administrator to add you to that group")
        return DaemonError(f"cannot talk to vnetd on {self.socket_path}: "
                           f"{describe_os_error(err)}")

    def _has_record(self, lab: str) -> bool:
        """Does the state directory hold a record of ``lab`` (``daemon.state.StateStore``)?"""
        try:
            return (Path(self.state_dir) / "labs" / f"{lab}.json").is_file()
        except (OSError, ValueError):
            return False

    def reachable(self) -> bool:
        """Does a vnetd answer?  (A busy one raises: starting another would take its socket.)"""
        try:
            self._exchange({"op": "ping"}, retry_refused=False)
            return True
        except (NotRunning, StoppedBeforeAnswering):
            return False

    def ensure_daemon(self) -> subprocess.Popen[bytes] | None:
        """The vnetd this call started (None: one was running)."""
        if self.reachable():
            return None
        state_dir = Path(self.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        command = [sys.executable, "-m", "vnet.daemon.main", "--socket", self.socket_path,
                   "--state-dir", self.state_dir, "--exit-when-idle"]
        if self.netns_name:
            command += ["--netns", self.netns_name]
        log_path = state_dir / "vnetd.log"
        with open(log_path, "ab") as log:
            started_at = log.tell()
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       start_new_session=True)
        deadline = time.monotonic() + DAEMON_START_TIMEOUT
        while not self.reachable():
            if process.poll() is not None:
                raise DaemonError(_why_it_stopped(log_path, started_at))
            if time.monotonic() > deadline:
                raise DaemonError(f"vnetd did not answer within {DAEMON_START_TIMEOUT:.0f} s; "
                                  f"see {log_path}")
            time.sleep(0.05)
        return process


def check_api_version(reply: dict[str, Any]) -> None:
    """Refuse to read a reply in an API version this vnet does not speak (``docs/api.md``)."""
    version = reply.get("api")
    if version == API_VERSION:
        return
    if not isinstance(version, int) or isinstance(version, bool) or version < API_VERSION:
        spoken = f"API version {version}" if isinstance(version, int) else "no API version"
        raise DaemonError(f"vnetd is older than this vnet: it speaks {spoken}, this vnet "
                          f"speaks version {API_VERSION}; restart vnetd from this vnet's "
                          f"installation ('systemctl restart vnetd')")
    raise DaemonError(f"vnetd is newer than this vnet: it speaks API version {version}, this "
                      f"vnet speaks version {API_VERSION}; upgrade vnet to vnetd's version")


def stopped_before_answering(op: str) -> str:
    """What to say when vnetd hung up before it answered ``op`` (killed, crashed)."""
    again = {"up": "run the same 'vnet up FILE' again: vnetd records every step, so the "
                   "next up finishes the job",
             "down": "run the same 'vnet down' again: vnetd records every step, so the "
                     "next down finishes the job"}.get(op, "try again")
    return (f"vnetd stopped before it answered this {op} (killed or crashed: see its log, "
            f"'journalctl -u vnetd', or vnetd.log in its state directory); {again}")


def check_size(request: dict[str, Any]) -> None:
    """Refuse, before sending it, a request over vnetd's limit (``MAX_REQUEST``)."""
    size = len(jsonlines.encode(request))
    if size <= MAX_REQUEST:
        return
    what = f"{request['source']}: " if request.get("op") == "up" else ""
    raise DaemonError(f"{what}too big to send to vnetd: the request would be "
                      f"{describe_size(size)}, over vnetd's limit of "
                      f"{describe_size(MAX_REQUEST)}; a topology file is normally a few KiB")


def _why_it_stopped(log_path: Path, offset: int) -> str:
    """vnetd's own last words (its ``vnetd: ...`` line) from this start, or where to look."""
    try:
        with open(log_path, "rb") as log:
            log.seek(offset)
            lines = log.read().decode(errors="replace").splitlines()
    except OSError:
        lines = []
    reasons = [line.removeprefix("vnetd: ") for line in lines if line.startswith("vnetd: ")]
    if reasons:
        return f"vnetd did not start: {reasons[-1]}"
    return f"vnetd did not start; see {log_path}"


def cmd_check(client: Client, args: argparse.Namespace) -> int:
    """Check every file, also after a bad one: each bad file's problems go to stderr; a
    single good file prints ``ok``, several print ``FILE: ok`` each.  Exit 1 if any is bad.
    ``--json``: every file with its problems, on stdout."""
    if args.json:
        checked = [{"file": path, "ok": not problems, "problems": problems}
                   for path, problems in ((path, check_file(path)) for path in args.files)]
        print(json.dumps({"ok": all(f["ok"] for f in checked), "files": checked}, indent=2))
        return 0 if all(f["ok"] for f in checked) else 1
    bad = 0
    for path in args.files:
        problems = check_file(path)
        if problems:
            bad += 1
            print("\n".join(problems), file=sys.stderr)
        elif len(args.files) > 1:
            print(f"{path}: ok")
    if len(args.files) == 1 and not bad:
        print("ok")
    if bad and len(args.files) > 1:
        print(f"vnet check: {bad} of {len(args.files)} files have errors", file=sys.stderr)
    return 1 if bad else 0


def check_file(path: str) -> list[str]:
    """The problems of one topology file (none: it is good); never raises for a bad file."""
    from vnet.topology import load_topology

    try:
        load_topology(path)
    except TopologyError as err:
        return err.problems
    except RecursionError:
        return [f"{path}:1: nested too deeply to be a topology file"]
    return []


def _load_topology(path: str) -> Topology:
    from vnet.topology import load_topology

    return load_topology(path)


def lab_name_in(text: str) -> str | None:
    """The lab's name as a topology file's top-level ``name: NAME`` line says it, for the
    progress line while vnetd reads the file; pure (None: no single such line)."""
    found = re.findall(r"""^name:[ \t]*(["']?)([A-Za-z0-9][A-Za-z0-9_.-]*)\1[ \t]*(?:#.*)?$""",
                       text, re.MULTILINE)
    return found[0][1] if len(found) == 1 else None


def cmd_up(client: Client, args: argparse.Namespace) -> int:
    request = {"op": "up", "text": Path(args.file).read_text(),
               "source": str(Path(args.file).resolve())}
    check_size(request)                  # fail here on one too big to send
    running = client.reachable()
    name = None if running else _load_topology(args.file).name   # a bad file starts no vnetd
    started = None if running else client.ensure_daemon()
    shown = ProgressLine(sys.stderr, name or lab_name_in(request["text"]) or Path(args.file).stem)
    try:
        result = client.call(**request, on_progress=shown)
    except VnetError:
        if name is None:   # vnetd read the file: a bad one is told as the local check tells it
            _load_topology(args.file)
        if started is not None:  # it leaves when it holds no lab: leave no process behind
            with contextlib.suppress(subprocess.TimeoutExpired):
                started.wait(DAEMON_EXIT_TIMEOUT)
        raise
    finally:
        shown.close()
    lab = result.get("lab", name)
    if "hosts" in result:    # published on the bus; every host answered
        print(f"lab {lab}: generation {result['generation']} up on "
              f"{', '.join(h['host'] for h in result['hosts'])}")
        return 0
    if result["changed"]:
        print(f"lab {lab}: up (created {result['created']}, removed {result['removed']})")
    else:
        print(f"lab {lab}: already up, nothing changed")
    if result.get("note"):
        print(f"note: {result['note']}")
    return 0


def cmd_down(client: Client, args: argparse.Namespace) -> int:
    lab = args.lab or _lab_name_of(args.file)
    shown = ProgressLine(sys.stderr, lab)
    try:
        result = client.call("down", lab=lab, on_progress=shown)
    finally:
        shown.close()
    if "hosts" in result:    # through the bus
        print(f"lab {lab}: down on {', '.join(h['host'] for h in result['hosts'])}")
        return 0
    print(f"lab {lab}: down (removed {result['removed']})")
    if result.get("note"):
        print(f"note: {result['note']}")
    pid = result.get("daemon_exiting")
    if pid:  # vnetd was started by `vnet up` and goes with its last lab: wait, leave no process
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    return 0


def cmd_shutdown(client: Client, args: argparse.Namespace) -> int:
    """Stop vnetd; its datapath and VM runners keep running (the next vnetd adopts them)
    unless ``--all``.  Waits until vnetd has gone."""
    pid = client.call("ping")["pid"]
    client.call("shutdown", all=args.all)
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if args.all:
        print("vnetd: stopped, with its datapath and VM runners")
    else:
        print("vnetd: stopped; its datapath and VM runners keep running (the next vnetd "
              "adopts them; 'vnet shutdown --all' stops them too)")
    return 0


def _lab_name_of(path: str | None) -> str:
    if path is None:
        raise DaemonError("say which lab: vnet down FILE, or vnet down --lab NAME")
    from vnet.topology import load_topology

    try:
        return load_topology(path).name
    except TopologyError as err:
        raise DaemonError(f"{err}\n(to take a lab down whatever its file says, use "
                          f"'vnet down --lab NAME')") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    status = client.call("status", lab=args.lab)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    datapath = status["daemon"].get("datapath") or {}
    if datapath.get("message", "running") != "running":   # restarts, failures: say so first
        print(f"datapath: {datapath['message']}")
    rows = []
    for lab in status["labs"]:
        for node in lab["nodes"]:
            for nic in node["nics"]:
                counters = nic["counters"] or {}
                drops = sum((counters.get("drops") or {}).values())
                vlans = ",".join(str(v) for v in nic["vlans"])
                if nic["mode"] == "trunk" and nic["native"]:
                    vlans += f" (native {nic['native']})"
                rows.append([lab["name"], node["name"], node["kind"], node["state"],
                             nic["name"], nic["ifname"], nic["mode"] or "-", vlans,
                             nic["mac"], ",".join(nic["ip"]) or "-",
                             str(counters.get("rx_frames", "-")),
                             str(counters.get("tx_frames", "-")), str(drops)])
        if lab.get("failed"):
            print(f"lab {lab['name']}: {lab['failed']}", file=sys.stderr)
        elif lab["pending"]:
            print(f"lab {lab['name']}: unfinished changes: {', '.join(lab['pending'])}; "
                  f"run vnet up or vnet down again", file=sys.stderr)
    header = ["LAB", "NODE", "KIND", "STATE", "NIC", "IFNAME", "MODE", "VLANS", "MAC", "IP",
              "RX", "TX", "DROPS"]
    print(format_table(header, rows) if rows else "no labs are up")
    networks = [[lab["name"], n["name"], str(n["vlan"]), n["mode"], n["gateway"] or "-",
                 n["uplink"] or "-"] for lab in status["labs"] for n in lab["networks"]]
    if networks:
        print()
        print(format_table(["LAB", "NETWORK", "VLAN", "MODE", "GATEWAY", "UPLINK"], networks))
    if "bus" in status:
        print()
        print(format_bus(status["bus"]))
    return 0


def format_bus(bus: dict[str, Any]) -> str:
    """The bus part of ``vnet status``: the connection, and each host's liveness and the
    generation it realised of each lab (or its error)."""
    connection = bus["connection"]
    line = f"bus: {connection['state']} as {bus['host']}"
    if connection.get("last_error"):
        line += f" ({connection['last_error']})"
    dropped = connection.get("dropped") or {}
    if dropped:
        line += "; dropped " + ", ".join(f"{n} {kind}" for kind, n in sorted(dropped.items()))
    rows = []
    for host in bus["hosts"]:
        labs = [f"{name}@{lab['generation']}" + (f" ({lab['error']})" if lab["error"] else "")
                for name, lab in host["labs"].items()]
        rows.append([host["host"] + (" (this host)" if host["local"] else ""), host["state"],
                     str(host["epoch"]), ", ".join(labs) or "-"])
    return line + "\n" + format_table(["HOST", "STATE", "EPOCH", "LABS (generation)"], rows)


def cmd_fdb(client: Client, args: argparse.Namespace) -> int:
    entries = client.call("fdb", lab=args.lab)
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    rows = [[str(e["vlan"]), e["mac"], e["port"], f"{e['age']:.1f}",
             "static" if e["static"] else "learned"] for e in entries]
    print(format_table(["VLAN", "MAC", "PORT", "AGE", "TYPE"], rows))
    return 0


def cmd_vm(client: Client, args: argparse.Namespace) -> int:
    result = client.call("vm", action=args.action, node=args.node, lab=args.lab,
                         force=args.force)
    print(f"vm {args.node}: {result['state']}")
    return 0


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in [header, *rows])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vnet", description="virtual networks of namespace "
                                     "and KVM nodes on a Python 802.1Q learning switch")
    parser.add_argument("--socket", default=os.environ.get("VNET_SOCKET", DEFAULT_SOCKET),
                        help="vnetd's API socket (default: $VNET_SOCKET or %(default)s)")
    parser.add_argument("--state-dir", default=os.environ.get("VNET_STATE_DIR",
                                                              DEFAULT_STATE_DIR),
                        help="state directory for a vnetd that `up` starts")
    parser.add_argument("--netns", help="network namespace for a vnetd that `up` starts")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("check", help="validate topology files: prints ok or the errors")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true",
                   help="each file's problems as JSON (file:line: key: what)")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("up", help="build a topology on this host (idempotent)")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("down", help="remove every kernel object a lab created")
    p.add_argument("file", nargs="?", metavar="FILE")
    p.add_argument("--lab", help="the lab's name, instead of its file")
    p.set_defaults(func=cmd_down)
    p = sub.add_parser("status", help="labs, nodes, NICs, ports, VLANs, counters")
    p.add_argument("lab", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("fdb", help="a lab's MAC table: VLAN, MAC, port, age, static/learned")
    p.add_argument("lab")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fdb)
    p = sub.add_parser("vm", help="start, stop or restart a VM node")
    p.add_argument("action", choices=["start", "stop", "restart"])
    p.add_argument("node")
    p.add_argument("--lab", help="the node's lab, when several labs have that node")
    p.add_argument("--force", action="store_true",
                   help="stop at once; without it the guest is asked to power off and is "
                        "turned off if it has not within 10 s")
    p.set_defaults(func=cmd_vm)
    p = sub.add_parser("shutdown", help="stop vnetd (the datapath and VMs keep running "
                       "unless --all)")
    p.add_argument("--all", action="store_true",
                   help="stop the datapath and every VM runner too")
    p.set_defaults(func=cmd_shutdown)
    from vnet.cli_attach import add_commands as add_attach  # exec and console

    add_attach(sub)
    from vnet.cli_observe import add_commands  # graph and test

    add_commands(sub)
    from vnet.cli_trace import add_command as add_trace

    add_trace(sub)
    from vnet.cli_capture import add_command as add_capture

    add_capture(sub)
    # `vnet bench ARGS` is handed whole to vnet.bench (see main); listed here for --help.
    sub.add_parser("bench", help="benchmark the datapath against the Linux bridge and OVS "
                   "(vnet bench --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from vnet.bench import main as bench  # heavy imports only when benchmarking

        return bench(argv[1:])
    args = build_parser().parse_args(argv)
    client = Client(args.socket, args.state_dir, args.netns)
    try:
        return int(args.func(client, args))
    except VnetError as err:
        print(f"vnet: {err}" if not isinstance(err, TopologyError) else str(err), file=sys.stderr)
        return 1
    except OSError as err:  # one that no message foresaw: still no errno text
        print(f"vnet: {describe_os_error(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # vnetd goes on with what it was asked: no traceback
        print("vnet: interrupted (vnetd finishes what it was asked: see 'vnet status')",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
