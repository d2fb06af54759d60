"""Labs brought up for a test: a private "host" namespace with its own vnetd.

A test never uses the machine's root namespace: ``TestHost`` creates a namespace that plays a
host, starts a ``vnetd`` inside it with its own socket, state directory and node-namespace
prefix (its own name: ``host.netns_name(lab, node)``, so that no other test host, test run or
vnetd on the machine wants the same namespaces), and removes all of it on ``close()``, also
when the test failed.  ``Lab`` is one topology brought up there,
with its nodes' places (namespace, interface) for sending, capturing and running commands.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vnet import jsonlines
from vnet.daemon import naming
from vnet.errors import DaemonError, VnetError
from vnet.host import netns
from vnet.testing.dataplane import Dataplane
from vnet.testing.wait import wait_until

START_TIMEOUT = 60.0  # generous: it is waited for only until vnetd answers


class TestHost:
    """A namespace playing a host, with a vnetd of its own (see module docstring)."""

    __test__ = False  # not a pytest test class

    def __init__(self, name: str | None = None, host: str | None = None,
                 vnetd_args: Sequence[str] = (), config: str = "") -> None:
        """``name``: the host namespace's, also its vnetd's ``netns_prefix`` (so a valid
        one); ``host``: the vnetd's host name (``--host``), which part of a multi-host lab it
        realises; ``vnetd_args``: more of vnetd's flags; ``config``: more of its vnetd.yaml
        (never the machine's /etc/vnet/vnetd.yaml)."""
        if "--config" in vnetd_args:
            raise ValueError("TestHost writes its vnetd's config file (with the host's own "
                             "netns_prefix): give the rest of it as config=, not --config")
        self.name = name or f"vnt-{secrets.token_hex(3)}"
        self.netns_prefix = self.name
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        (self.workdir / "vnetd.yaml").write_text(
            f"netns_prefix: {self.netns_prefix}\n{textwrap.dedent(config)}")
        self.vnetd_args = [*(("--host", host) if host is not None else ()), "--config",
                           str(self.workdir / "vnetd.yaml"), *vnetd_args]
        self.socket = str(self.workdir / "vnetd.sock")
        self.state_dir = str(self.workdir / "state")
        self.labs: dict[str, Lab] = {}
        self.process: subprocess.Popen[bytes] | None = None
        netns.create(self.name)
        try:
            with netns.entered(self.name):
                subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            self._start_daemon()
        except BaseException:
            self.close()
            raise

    def _start_daemon(self) -> None:
        log = open(self.workdir / "vnetd.log", "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vnet.daemon.main", "--socket", self.socket,
             "--state-dir", self.state_dir, "--netns", self.name, "--log-level", "DEBUG",
             *self.vnetd_args],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        process = self.process

        def answers() -> bool:
            if process.poll() is not None:
                raise DaemonError(f"vnetd exited ({process.returncode}) in {self.name} "
                                  f"before it answered:\n{self.log()}")
            try:
                self.call("ping")
            except (OSError, DaemonError):
                return False
            return True

        try:
            wait_until(answers, START_TIMEOUT, message="vnetd to answer on its socket")
        except AssertionError as err:
            raise DaemonError(f"vnetd did not start in {self.name}: {err}\n{self.log()}"
                              ) from None

    def stop_daemon(self) -> None:
        """Stop vnetd as a machine's shutdown or reboot does (``vnet shutdown --all``: the
        datapath and VM runners stop too): its labs stay recorded, and ``start_daemon``
        starts the next one on the same socket and state."""
        for lab in self.labs.values():
            lab.close()
        if self.process is not None and self.process.poll() is None:
            self._shutdown_all(30)
        kill_leftovers(self.state_dir)

    def _shutdown_all(self, timeout: float) -> None:
        """``vnet shutdown --all`` and wait for vnetd to exit (killed after ``timeout``)."""
        assert self.process is not None
        with contextlib.suppress(OSError, DaemonError):
            self.call("shutdown", all=True)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill_daemon(self) -> None:
        """``kill -9`` vnetd alone: the datapath and VM runners keep running."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def terminate_daemon(self) -> None:
        """Stop vnetd as ``systemctl stop`` does (SIGTERM): by default the datapath and VM
        runners keep running for the next vnetd to adopt."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def start_daemon(self) -> None:
        """Start vnetd again after ``stop_daemon``; returns once it answers."""
        self._start_daemon()

    def call(self, op: str, **args: Any) -> Any:
        try:
            reply = jsonlines.call(self.socket, {"op": op, **args})
        except (OSError, jsonlines.ProtocolError) as err:
            raise DaemonError(f"vnetd in {self.name} failed during {op!r}: {err}; "
                              f"its log ends:\n{self.log()}") from err
        if not reply.get("ok"):
            raise DaemonError(str(reply.get("error")))
        return reply.get("result")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the ``vnet`` CLI against this host's vnetd."""
        result = subprocess.run(
            [sys.executable, "-m", "vnet.cli", "--socket", self.socket, "--state-dir",
             self.state_dir, "--netns", self.name, *args],
            capture_output=True, text=True, timeout=300)
        if check and result.returncode != 0:
            raise AssertionError(f"vnet {' '.join(args)} exited {result.returncode}: "
                                 f"{result.stderr.strip()}\nvnetd's log ends:\n{self.log()}")
        return result

    def up(self, path: str | Path) -> Lab:
        path = Path(path).resolve()
        result = self.call("up", text=path.read_text(), source=str(path))
        lab = Lab(self, result["lab"])
        self.labs[lab.name] = lab
        return lab

    def down(self, lab: str) -> None:
        known = self.labs.pop(lab, None)
        if known is not None:
            known.close()
        self.call("down", lab=lab)

    def netns_name(self, lab: str, node: str) -> str:
        """The namespace this host's vnetd gives ``node`` of ``lab`` (whether it is up or
        not; ``Lab.netns`` asks vnetd where an up node is)."""
        return naming.netns_name(lab, node, self.netns_prefix)

    def lab_namespaces(self, lab: str) -> set[str]:
        """The namespaces on the machine named as this host's nodes of ``lab`` are."""
        return {n for n in netns.list_names() if n.startswith(self.netns_name(lab, ""))}

    def exec(self, command: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run a command in the host namespace itself."""
        return run_in_netns(self.name, command, **kwargs)

    def log(self) -> str:
        path = self.workdir / "vnetd.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def close(self) -> None:
        """Take every lab down, stop vnetd, remove the namespaces (the host's, and any node
        namespace with its prefix that a failed down left) and the files."""
        try:
            if (self.process is not None and self.process.poll() is not None
                    and any(Path(self.state_dir, "labs").glob("*"))):
                # killed (a test of that failed): a vnetd again, to take its labs down
                with contextlib.suppress(OSError, DaemonError):
                    self._start_daemon()
            for lab in list(self.labs):
                with contextlib.suppress(OSError, DaemonError):
                    self.down(lab)
            if self.process is not None and self.process.poll() is None:
                try:
                    for record in self.call("status")["labs"]:
                        self.call("down", lab=record["name"])
                except (OSError, DaemonError):
                    pass
                self._shutdown_all(10)
        finally:
            kill_leftovers(self.state_dir)   # what a killed vnetd left running
            self._remove_leftovers()
            netns.remove(self.name)
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _remove_leftovers(self) -> None:
        """Node namespaces of this host's prefix that a failed down left (none is looked for
        under the default prefix, which is every other vnetd's)."""
        if self.netns_prefix == naming.NETNS_PREFIX:
            return
        for name in netns.list_names():
            if name.startswith(f"{self.netns_prefix}-"):
                with contextlib.suppress(VnetError):
                    netns.remove(name)

    def __enter__(self) -> TestHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Lab:
    """A topology that is up on a ``TestHost``."""

    __test__ = False

    def __init__(self, host: TestHost, name: str) -> None:
        self.host = host
        self.name = name
        self._dataplane: Dataplane | None = None

    def status(self) -> dict[str, Any]:
        labs: list[dict[str, Any]] = self.host.call("status", lab=self.name)["labs"]
        return labs[0]

    def nics(self) -> dict[str, tuple[str, str]]:
        """``"node:nic"`` -> (namespace, interface name) for every namespace node's NIC."""
        return {f"{node['name']}:{nic['name']}": (node["netns"], nic["name"])
                for node in self.status()["nodes"] if node["kind"] == "netns"
                for nic in node["nics"]}

    def netns(self, node: str) -> str:
        return str(self.host.call("node", node=node, lab=self.name)["netns"])

    def exec(self, node: str, command: Sequence[str], **kwargs: Any
             ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` inside ``node`` (like ``vnet exec``), capturing its output."""
        return run_in_netns(self.netns(node), command, **kwargs)

    def fdb(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.host.call("fdb", lab=self.name)
        return result

    def counters(self, port: str) -> dict[str, Any]:
        """Switch counters of the port of NIC ``"node:nic"``."""
        node, nic = port.split(":")
        for n in self.status()["nodes"]:
            for candidate in n["nics"]:
                if n["name"] == node and candidate["name"] == nic:
                    return dict(candidate["counters"])
        raise KeyError(port)

    @property
    def dataplane(self) -> Dataplane:
        if self._dataplane is None:
            self._dataplane = Dataplane(self.nics())
        return self._dataplane

    def close(self) -> None:
        if self._dataplane is not None:
            self._dataplane.close()
            self._dataplane = None


def leftovers(state_dir: str | Path) -> list[int]:
    """Processes with ``state_dir`` on their command line (a datapath or VM runner that
    outlived its vnetd, or that vnetd itself)."""
    marker = str(state_dir).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline and b"vnet." in cmdline:
                found.append(int(entry.name))
    return found


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def kill_leftovers(state_dir: str | Path) -> None:
    """SIGKILL every process ``leftovers`` finds (only a test's own state directory)."""
    for pid in leftovers(state_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run_in_netns(name: str, command: Sequence[str], check: bool = False, timeout: float = 120,
                 **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``command`` inside namespace ``name`` as ``vnet exec`` does (the node's /sys and
    /etc, see ``netns.become_node``), capturing its output."""
    with netns.node_preexec(name) as enter:
        return subprocess.run(list(command), preexec_fn=enter, capture_output=True, text=True,
                              check=check, timeout=timeout, **kwargs)


def popen_in_netns(name: str, command: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Start ``command`` inside namespace ``name`` in the background (a server, a capture),
    entered as ``vnet exec`` does."""
    with netns.node_preexec(name) as enter:
        return subprocess.Popen(list(command), preexec_fn=enter, **kwargs)
