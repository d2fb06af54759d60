"""A real mosquitto of a test's own: in a fresh network namespace, with users and vnet's ACL.

    with Broker(users={"h1": "pw1", "h2": "pw2"}) as broker:
        result = broker.run(lambda: scenario(broker.url))   # asyncio, inside the namespace

The broker listens on 127.0.0.1 inside a namespace the fixture creates (nothing touches the
machine's own network), reads a config file of its own (``conf``), a password file made by
``mosquitto_passwd``, and the ACL of docs/bus.md (``acl_text``: every host reads the tree and
writes only under ``ROOT/hosts/USERNAME/``; the ``admin`` user and the ``operators`` hosts
write desired state).  ``listen=None`` listens on every address of the broker's namespace,
for hosts in other namespaces linked to it (``link``).
With ``tls_clients`` it also has a TLS listener (``tls_url``) that requires client
certificates, whose CN is the username.  ``max_queued_messages`` is raised unless the test
asks for mosquitto's default; persistence is off unless asked for (then in the fixture's own
directory).  Start-up waits until the listener accepts a TCP connection; ``close`` stops the
broker and removes everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Collection, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from vnet.host import netns
from vnet.testing.wait import wait_until

START_TIMEOUT = 10.0
DEFAULT_ROOT = "vnet/v1"
T = TypeVar("T")


def acl_text(root: str = DEFAULT_ROOT, admin: str | None = "vnet-admin",
             operators: Collection[str] = ()) -> str:
    """vnet's mosquitto ACL (the one shipped in docs/examples/mosquitto/vnet.acl);
    ``operators`` are hosts whose vnetd may publish desired state (vnet up/down there)."""
    lines = [
        "# vnet's bus ACL (docs/bus.md): every host reads the whole tree and writes only",
        "# under its own subtree; %u is the username (with TLS and use_identity_as_username,",
        "# the client certificate's CN).  mosquitto substitutes %u only as a whole level.",
        f"pattern read {root}/#",
        f"pattern write {root}/hosts/%u/#",
    ]
    if admin is not None:
        lines += ["",
                  "# the operator's identity publishes desired state (the labs' topologies)",
                  f"user {admin}",
                  f"topic readwrite {root}/#"]
    lines += ["",
              "# a host where vnet up/down of multi-host labs may run publishes desired state",
              f"# too: for each such host, 'user HOST' then 'topic write {root}/labs/#'"]
    for host in operators:
        lines += [f"user {host}", f"topic write {root}/labs/#"]
    return "\n".join(lines) + "\n"


def conf_text(port: int, workdir: Path, *, max_queued: int | None = 20000,
              persistence: bool = False, tls: Mapping[str, str] | None = None,
              listen: str | None = "127.0.0.1") -> str:
    """The broker config of the fixture: the shipped example's settings, on a test port."""
    lines = [
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {workdir / 'passwd'}",
        f"acl_file {workdir / 'acl'}",
        f"listener {port} {listen}" if listen else f"listener {port}",
        "user root",
        f"log_dest file {workdir / 'mosquitto.log'}",
        "log_type all",
        "connection_messages true",
        "max_packet_size 2097152",
    ]
    if tls is not None:      # clients authenticate by certificate: its CN is the username
        lines += [f"listener {tls['port']} 127.0.0.1",
                  f"cafile {tls['cafile']}", f"certfile {tls['certfile']}",
                  f"keyfile {tls['keyfile']}",
                  "require_certificate true", "use_identity_as_username true"]
    if max_queued is not None:
        lines += [f"max_queued_messages {max_queued}", "max_inflight_messages 100"]
    if persistence:
        lines += ["persistence true", f"persistence_location {workdir}/",
                  "autosave_interval 1", "autosave_on_changes false"]
    else:
        lines += ["persistence false"]
    return "\n".join(lines) + "\n"


def make_test_pki(directory: Path, clients: list[str]) -> dict[str, str]:
    """A throw-away CA, a server certificate for 127.0.0.1 and one client certificate per
    name (CN = the name: the ACL's ``%u`` with ``use_identity_as_username``), by openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=vnet test CA")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    out = {"cafile": str(directory / "ca.crt")}
    for name, ext in [("server", True), *((c, False) for c in clients)]:
        openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={'127.0.0.1' if name == 'server' else name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
                *(["-extfile", "san.ext"] if ext else []))
        out[f"{name}.crt"] = str(directory / f"{name}.crt")
        out[f"{name}.key"] = str(directory / f"{name}.key")
    out["certfile"], out["keyfile"] = out["server.crt"], out["server.key"]
    return out


class Broker:
    """mosquitto in a namespace of its own (see module docstring)."""

    def __init__(self, users: Mapping[str, str], *, admin: str | None = "vnet-admin",
                 admin_password: str = "admin-secret", root: str = DEFAULT_ROOT,
                 max_queued: int | None = 20000, persistence: bool = False,
                 port: int = 1883, tls_clients: list[str] | None = None,
                 tls_port: int = 8883, operators: Collection[str] = (),
                 listen: str | None = "127.0.0.1") -> None:
        if shutil.which("mosquitto", path=os.environ.get("PATH", "") + ":/usr/sbin") is None:
            raise RuntimeError("mosquitto is not installed: run .ci/install (Debian package "
                               "mosquitto)")
        self.netns = f"vnb-{secrets.token_hex(3)}"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.netns}-"))
        self.port = port
        self.tls: dict[str, str] | None = None
        self.users = dict(users)
        if admin is not None:
            self.users[admin] = admin_password
        self.process: subprocess.Popen[bytes] | None = None
        self.conf = self.workdir / "mosquitto.conf"
        self._netns_made = False
        try:
            netns.create(self.netns)
            self._netns_made = True
            self.exec(["ip", "link", "set", "lo", "up"], check=True)
            self._write_passwords()
            if tls_clients is not None:
                self.tls = {**make_test_pki(self.workdir / "pki", tls_clients),
                            "port": str(tls_port)}
            (self.workdir / "acl").write_text(acl_text(root, admin, operators))
            self.conf.write_text(conf_text(port, self.workdir, max_queued=max_queued,
                                           persistence=persistence, tls=self.tls,
                                           listen=listen))
            for path in (self.workdir / "acl", self.workdir / "passwd", self.conf):
                path.chmod(0o600)
            self.start()
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        if self.tls is None:
            raise RuntimeError("this broker has no TLS listener (Broker(tls_clients=[...]))")
        return f"mqtts://127.0.0.1:{self.tls['port']}"

    def exec(self, command: list[str], check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a command inside the broker's namespace (mosquitto_sub, ...)."""
        fd = os.open(netns.netns_path(self.netns), os.O_RDONLY)
        try:
            return subprocess.run(command, preexec_fn=lambda: netns.setns_fd(fd), check=check,
                                  capture_output=True, text=True, timeout=60)
        finally:
            os.close(fd)

    def popen(self, command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a process inside the broker's namespace (a client the test may kill -9)."""
        fd = os.open(netns.netns_path(self.netns), os.O_RDONLY)
        try:
            return subprocess.Popen(command, preexec_fn=lambda: netns.setns_fd(fd),
                                    pass_fds=(), **kwargs)
        finally:
            os.close(fd)

    def link(self, host_netns: str, index: int) -> str:
        """A veth from the broker's namespace to ``host_netns`` (10.254.INDEX.0/30, the
        broker at .1, the host at .2); returns the broker URL as that host reaches it."""
        if not 0 <= index <= 255:
            raise ValueError("index must be 0..255")
        outside, inside = f"vnbk{index}", f"vnbh{index}"
        self.exec(["ip", "link", "add", outside, "type", "veth", "peer", "name", inside,
                   "netns", host_netns], check=True)
        self.exec(["ip", "addr", "add", f"10.254.{index}.1/30", "dev", outside], check=True)
        self.exec(["ip", "link", "set", outside, "up"], check=True)
        with netns.entered(host_netns):
            subprocess.run(["ip", "addr", "add", f"10.254.{index}.2/30", "dev", inside],
                           check=True, capture_output=True)
            subprocess.run(["ip", "link", "set", inside, "up"], check=True,
                           capture_output=True)
        return f"mqtt://10.254.{index}.1:{self.port}"

    def _write_passwords(self) -> None:
        path = self.workdir / "passwd"
        path.write_text("".join(f"{user}:{password}\n" for user, password in self.users.items()))
        path.chmod(0o600)
        subprocess.run(["mosquitto_passwd", "-U", str(path)], check=True, capture_output=True)

    def start(self) -> None:
        """Start mosquitto and return once its listener accepts connections."""
        log = open(self.workdir / "stdout.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.process = self.popen(["/usr/sbin/mosquitto", "-c", str(self.conf)],
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            log.close()
        process = self.process

        def accepts() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start in {self.netns}:\n{self.log()}")
            return self._accepts()

        wait_until(accepts, START_TIMEOUT, lambda: f"mosquitto to accept connections in "
                   f"{self.netns}:\n{self.log()}")

    def stop(self, kill: bool = False) -> None:
        """Stop mosquitto (``kill``: SIGKILL, as a crash: no final persistence save)."""
        if self.process is None or self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def _accepts(self) -> bool:
        with netns.entered(self.netns):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

    def log(self) -> str:
        parts = []
        for name in ("stdout.log", "mosquitto.log"):
            path = self.workdir / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        with netns.entered(self.netns):
            yield

    def run(self, scenario: Callable[[], Coroutine[Any, Any, T]], timeout: float = 120) -> T:
        """Run an asyncio scenario on a thread inside the broker's namespace (threads it starts,
        such as aiomqtt's connect executor, are created there too) and return its result."""
        outcome: dict[str, Any] = {}

        def main() -> None:
            try:
                with netns.entered(self.netns):
                    outcome["result"] = asyncio.run(scenario())
            except BaseException as err:  # handed back to the caller's thread
                outcome["error"] = err

        thread = threading.Thread(target=main, name=f"bus-{self.netns}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"the bus scenario did not finish in {timeout} s; broker log:\n"
                               f"{self.log()}")
        if "error" in outcome:
            raise outcome["error"]
        result: T = outcome["result"]
        return result

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if self._netns_made:
                netns.remove(self.netns)
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
