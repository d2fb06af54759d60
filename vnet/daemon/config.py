"""vnetd's configuration file: ``/etc/vnet/vnetd.yaml``, or ``vnetd --config FILE``.

It is checked like a topology file and by the same machinery: the field table ``DAEMON``
(specs from ``vnet.topology.spec``) gives both the structural checks and the published JSON
Schema (``vnetd.schema.json``), and ``read_yaml`` keeps every key's line, so that each problem
reads ``FILE:LINE: KEY.PATH: what is wrong``, all of them at once.  What a schema cannot say
is checked here, at the key's line: the parts of the broker URL, the metrics listen address,
files that must exist, secrets that only root may read, the datapath's interpreter.

Precedence: command-line flags, then the environment (``$VNET_DATAPATH_PYTHON``,
``$VNET_DATAPATH_IO``, ``$VNET_DATAPATH_BUSY_POLL_US``, ``$VNET_DATAPATH_KERNEL_FLOWS``), then
this file, then the defaults
below (all of them are here).  A missing default file means all defaults; a missing
``--config FILE`` is an error.  Relative paths in the file are relative to its directory.

Acted on today: ``host`` (which part of a multi-host lab this vnetd realises; ``--host``),
``socket``, ``state_dir``, ``netns``, ``netns_prefix`` (node namespaces are
``PREFIX-LAB-NODE``), ``log_level``, ``datapath`` (its ``io``,
``busy_poll_us`` and ``kernel_flows`` reach the datapath process through the variables above,
which it reads)
``bus`` (``vnet.daemon.bus_service``), ``access`` (the API socket's group and the roles:
``vnet.daemon.access``; every user and group it names must exist) and ``metrics`` (the
Prometheus endpoint: ``vnet.daemon.metricsserver``).

Regenerate the published schema after changing the table::

    python -m vnet.daemon.config > vnet/daemon/vnetd.schema.json
"""

from __future__ import annotations

import grp
import ipaddress
import json
import os
import pwd
import re
import shutil
import socket as socketlib
import stat
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

from vnet.daemon.defaults import DEFAULT_SOCKET, DEFAULT_STATE_DIR
from vnet.daemon.naming import NETNS_PREFIX, NETNS_PREFIX_PATTERN, NETNS_PREFIX_WHY
from vnet.datapath.engine import BUSY_POLL, IO_MODES
from vnet.errors import VnetError
from vnet.topology.fields import BROKER, HOST_NAME, HOST_NAME_WHY, TOPIC_ROOT
from vnet.topology.model import DEFAULT_TOPIC_ROOT
from vnet.topology.report import PATH_LIMIT, KeyPath, Reporter, clip, quote
from vnet.topology.spec import JSON, Bool, Enum, Field, Fields, Int, ListOf, Obj, Str
from vnet.topology.yamlsource import FileTooLarge, read_file, read_yaml

LogLevel = Literal["debug", "info", "warning", "error", "critical"]
IoMode = Literal["ring", "socket"]

DEFAULT_CONFIG_FILE = Path("/etc/vnet/vnetd.yaml")
DEFAULT_LOG_LEVEL: LogLevel = "info"
DEFAULT_IO: IoMode = "ring"
DEFAULT_BUSY_POLL_US = round(BUSY_POLL * 1e6)  # the datapath's own default
DEFAULT_KEEPALIVE = 60
DEFAULT_METRICS_HOST, DEFAULT_METRICS_PORT = "127.0.0.1", 9470
DEFAULT_METRICS_LISTEN = f"{DEFAULT_METRICS_HOST}:{DEFAULT_METRICS_PORT}"
DEFAULT_ACCESS_GROUP = "vnet"
BROKER_PORTS = {"mqtt": 1883, "mqtts": 8883}
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
MAX_SOCKET_PATH = 107  # bytes: sun_path holds 108 with the terminating NUL


class ConfigError(VnetError):
    """The config file is unreadable or wrong; ``problems`` as in ``TopologyError``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# ---- the model --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    """A host (name or IP address) and port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Broker:
    scheme: Literal["mqtt", "mqtts"]
    endpoint: Endpoint

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.endpoint}"


@dataclass(frozen=True)
class TlsConfig:
    """Absent files mean the system's CAs and no client certificate."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True)
class BusConfig:
    """The MQTT bus between hosts; the password stays in its file (the bus client reads it
    at each connection)."""

    broker: Broker
    username: str | None = None
    password_file: Path | None = None
    tls: TlsConfig | None = None
    keepalive: int = DEFAULT_KEEPALIVE
    topic_root: str = DEFAULT_TOPIC_ROOT


@dataclass(frozen=True)
class MetricsConfig:
    listen: Endpoint = Endpoint(DEFAULT_METRICS_HOST, DEFAULT_METRICS_PORT)


@dataclass(frozen=True)
class Roles:
    """Who holds each role: user names and ``@group`` entries (``vnet.daemon.access``)."""

    viewer: tuple[str, ...] = ()
    operator: tuple[str, ...] = ()
    admin: tuple[str, ...] = ()


@dataclass(frozen=True)
class AccessConfig:
    group: str = DEFAULT_ACCESS_GROUP
    roles: Roles = field(default_factory=Roles)


@dataclass(frozen=True)
class DatapathConfig:
    python: str | None = None  # None: vnetd's own interpreter
    io: IoMode = DEFAULT_IO
    busy_poll_us: int = DEFAULT_BUSY_POLL_US
    kernel_flows: bool = True


@dataclass(frozen=True)
class DaemonConfig:
    host: str
    socket: Path = Path(DEFAULT_SOCKET)
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    netns: str | None = None
    netns_prefix: str = NETNS_PREFIX
    log_level: LogLevel = DEFAULT_LOG_LEVEL
    datapath: DatapathConfig = field(default_factory=DatapathConfig)
    bus: BusConfig | None = None
    metrics: MetricsConfig | None = None  # None: no metrics endpoint
    access: AccessConfig = field(default_factory=AccessConfig)
    stop_all: bool = False  # a stop (SIGTERM) stops the datapath and VM runners too
    source: Path | None = None  # the file it came from; None: defaults only


# ---- the format ---------------------------------------------------------------------------------

PATH = r"^[^\s\x00]([^\n\x00]*[^\s\x00])?$"
PATH_WHY = ("a file path without leading or trailing spaces, or NUL characters; relative to this "
            "file's directory")
NETNS = r"^(?!\.\.?$)[A-Za-z0-9_.-]{1,64}$"
LISTEN = r"^(\[[0-9A-Fa-f:.]+\]|[0-9]{1,3}(\.[0-9]{1,3}){3}):[0-9]{1,5}$"
GROUP = r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$"
PRINCIPAL = r"^@?[A-Za-z_][A-Za-z0-9_.-]{0,31}$"
PRINCIPAL_WHY = "a user name, or @group for every member of that group"

path_text = Str(PATH, PATH_WHY)
principals = ListOf(Str(PRINCIPAL, PRINCIPAL_WHY), unique=True)

DATAPATH = Obj(noun="datapath", description="The datapath process (the learning switch).",
               fields={
    "python": Field(Str(PATH, "an interpreter's name or path"),
                    "The Python that runs the datapath, e.g. pypy3 (about 1.7x the small-frame "
                    "rate); default: vnetd's own."),
    "io": Field(Enum(IO_MODES), "ring: PACKET_MMAP rings; socket: a system call per frame "
                "(the reference path).", default=DEFAULT_IO),
    "busy_poll_us": Field(Int(0, 100_000), "Microseconds to poll after forwarding before "
                          "sleeping (0: never).", default=DEFAULT_BUSY_POLL_US),
    "kernel_flows": Field(Bool(), "Whether steady unicast flows between vnet's own interfaces "
                          "are handed to the kernel (tc cls_bpf + mirred redirects), as Open "
                          "vSwitch's kernel datapath does; false: every frame through Python.",
                          default=True),
})

TLS = Obj(noun="tls", description="TLS to an mqtts:// broker; the files must exist.", fields={
    "ca_file": Field(path_text, "CA certificates (PEM) to verify the broker with; default: "
                     "the system's."),
    "cert_file": Field(path_text, "Client certificate (PEM).", requires="key_file"),
    "key_file": Field(path_text, "The client certificate's private key (PEM): only its "
                      "owner, root, may read it.", requires="cert_file"),
})

BUS = Obj(noun="bus", description="The MQTT bus between the hosts of multi-host labs.", fields={
    "broker": Field(Str(BROKER, "mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"),
                    "The broker: mqtt://HOST[:PORT] (port 1883) or mqtts://HOST[:PORT] "
                    "(TLS, port 8883).", required=True),
    "username": Field(Str(r"^\S(.*\S)?$", "no leading or trailing spaces"),
                      "The MQTT user name."),
    "password_file": Field(path_text, "A file holding the MQTT password: only its owner, root, "
                           "may read it (chmod 600).", requires="username"),
    "tls": Field(TLS, "TLS settings (mqtts:// only)."),
    "keepalive": Field(Int(1, 65535), "Seconds between MQTT keep-alive pings.",
                       default=DEFAULT_KEEPALIVE),
    "topic_root": Field(Str(TOPIC_ROOT, "topic levels separated by '/', no wildcards"),
                        "Prefix of every topic vnet uses.", default=DEFAULT_TOPIC_ROOT),
})

METRICS = Obj(noun="metrics", description="A Prometheus metrics endpoint (off unless given).",
              fields={
    "listen": Field(Str(LISTEN, "IP:PORT, e.g. 127.0.0.1:9470 or [::1]:9470"),
                    "The address to serve metrics on: IP:PORT.",
                    default=DEFAULT_METRICS_LISTEN),
})

ROLES = Obj(noun="roles", description="Who holds each role; root is always admin. Entries are "
            "user names or @group (every member of the group), which must exist.",
            fields={
    "viewer": Field(principals, "May read: status, fdb, console logs."),
    "operator": Field(principals, "A viewer who may also start, stop and restart VMs, attach "
                      "to consoles and exec in nodes."),
    "admin": Field(principals, "An operator who may also bring labs up and down, reload and "
                   "shut vnetd down."),
})

ACCESS = Obj(noun="access", description="Who may use vnetd's API socket, and for what.",
             fields={
    "group": Field(Str(GROUP, "a group name"), "The group that may connect to the API socket.",
                   default=DEFAULT_ACCESS_GROUP),
    "roles": Field(ROLES, "Who holds each role (root is always admin): user names and @group "
                   "entries, each of which must exist on this machine."),
})

DAEMON = Obj(noun="config", description="vnetd's configuration file (version 1).", fields={
    "version": Field(Enum((1,)), "The format version; only 1 exists.", default=1),
    "host": Field(Str(HOST_NAME, HOST_NAME_WHY), "This host's name in multi-host labs (a key "
                  "of the topology's hosts:); default: the machine's short host name."),
    "socket": Field(path_text, "vnetd's API socket.", default=DEFAULT_SOCKET),
    "state_dir": Field(path_text, "Where lab records and logs live.", default=DEFAULT_STATE_DIR),
    "netns": Field(Str(NETNS, "a name under /run/netns"),
                   "Run vnetd inside this network namespace (a test 'host')."),
    "netns_prefix": Field(Str(NETNS_PREFIX_PATTERN, NETNS_PREFIX_WHY),
                          "Node namespaces are PREFIX-LAB-NODE: a vnetd of its own on one "
                          "machine (a test suite's) takes a prefix of its own.",
                          default=NETNS_PREFIX),
    "log_level": Field(Enum(LOG_LEVELS), "How much vnetd logs.", default=DEFAULT_LOG_LEVEL),
    "datapath": Field(DATAPATH, "The datapath process."),
    "bus": Field(BUS, "The MQTT bus of multi-host labs (off unless given)."),
    "metrics": Field(METRICS, "The metrics endpoint (off unless given)."),
    "access": Field(ACCESS, "Access to the API socket by role."),
    "stop_all": Field(Bool(), "Whether stopping vnetd (SIGTERM, systemctl stop) stops the "
                      "datapath and every VM runner too; by default they keep running and the "
                      "next vnetd adopts them.", default=False),
})


def json_schema() -> JSON:
    """The JSON Schema (draft 2020-12) of the config file."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "vnetd configuration", **DAEMON.schema()}


# ---- loading ----------------------------------------------------------------------------------

def load_config(path: str | Path | None = None, *, hostname: str | None = None) -> DaemonConfig:
    """Read and check ``path``, or the default file (which may be absent: all defaults).

    ``hostname`` stands in for the machine's (tests); raises ``ConfigError``.
    """
    file = DEFAULT_CONFIG_FILE if path is None else Path(path)
    machine = socketlib.gethostname() if hostname is None else hostname
    try:
        text = read_file(file)
    except FileTooLarge as err:
        raise ConfigError([f"{file}:1: {err}"]) from None
    except FileNotFoundError:
        if path is None:
            return replace(parse_config("", str(file), hostname=machine), source=None)
        raise ConfigError([f"{file}: no such file: give --config an existing file, or leave "
                           f"--config out to use {DEFAULT_CONFIG_FILE} if it exists"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{file}: is a directory, not a config file"]) from None
    except UnicodeDecodeError as err:
        raise ConfigError([f"{file}:1: not UTF-8 text ({err.reason})"]) from None
    except OSError as err:
        raise ConfigError([f"{file}: cannot read: {(err.strerror or str(err)).lower()}"]
                          ) from None
    return parse_config(text, str(file), base_dir=file.absolute().parent, hostname=machine)


def parse_config(text: str, source: str = "<string>", *, base_dir: Path | None = None,
                 hostname: str) -> DaemonConfig:
    """Check ``text`` and build its ``DaemonConfig``, or raise ``ConfigError`` with every
    problem; relative paths resolve against ``base_dir`` (kept relative if None)."""
    rep = Reporter(source)
    document = read_yaml(text, rep, empty_ok=True)
    top = DAEMON.check(document, (), rep)
    config = _Builder(rep, base_dir).build(top, hostname) if isinstance(top, Fields) else None
    if rep.problems or config is None:
        raise ConfigError(rep.problems or [f"{source}:1: not a vnetd config"])
    is_pseudo = source.startswith("<") and source.endswith(">")
    return replace(config, source=None if is_pseudo else Path(source))


def with_flags(config: DaemonConfig, *, socket: str | None = None, state_dir: str | None = None,
               netns: str | None = None, log_level: str | None = None,
               datapath_python: str | None = None, host: str | None = None,
               stop_all: bool | None = None) -> DaemonConfig:
    """``config`` with the command line's values (None: not given) in place of the file's."""
    changes: dict[str, Any] = {}
    if host is not None:
        changes["host"] = check_host_flag(host)
    if socket is not None:
        changes["socket"] = Path(socket)
    if state_dir is not None:
        changes["state_dir"] = Path(state_dir)
    if netns is not None:
        changes["netns"] = netns
    if log_level is not None:
        changes["log_level"] = log_level.lower()
    if datapath_python is not None:
        changes["datapath"] = replace(config.datapath, python=datapath_python)
    if stop_all is not None:
        changes["stop_all"] = stop_all
    return replace(config, **changes)


def check_host_flag(host: str) -> str:
    """``vnetd --host NAME``'s value, if it can be a key of a topology's hosts:."""
    if not re.fullmatch(HOST_NAME, host):
        raise ConfigError([f"--host {quote(host)}: not a valid vnet host name ({HOST_NAME_WHY}); "
                           "give this host's name under the topology's hosts:"])
    return host


def datapath_environment(config: DaemonConfig) -> dict[str, str]:
    """The variables through which the datapath process takes its settings from vnetd."""
    return {"VNET_DATAPATH_IO": config.datapath.io,
            "VNET_DATAPATH_BUSY_POLL_US": str(config.datapath.busy_poll_us),
            "VNET_DATAPATH_KERNEL_FLOWS": "on" if config.datapath.kernel_flows else "off"}


# ---- checks of meaning ------------------------------------------------------------------------

_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DNS_NAME = rf"{_LABEL}(\.{_LABEL})*\.?"


def parse_endpoint(text: str, *, default_port: int | None, names: bool) -> Endpoint:
    """``HOST[:PORT]``: an IPv4 address, ``[IPv6]`` or (with ``names``) a DNS name; raises
    ``ValueError`` with a message for the user."""
    example = "mqtt://broker.example:1883" if names else "127.0.0.1:9470 or [::1]:9470"
    port_text: str | None = None
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        try:
            host = str(ipaddress.IPv6Address(inside))
        except ValueError:
            host = ""
        if not bracket or not host or (rest and not rest.startswith(":")):
            raise ValueError(f"{quote(text)}: brackets hold an IPv6 address, e.g. [fd00::1]:9470")
        if rest:
            port_text = rest[1:]
    else:
        if text.count(":") > 1:
            raise ValueError(f"{quote(text)}: an IPv6 address goes in brackets, e.g. {example}")
        host, colon, after = text.partition(":")
        if colon:
            port_text = after
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"{quote(host)} is not an IPv4 address") from None
        elif not names:
            raise ValueError(f"{quote(host)} is not an IP address (give one of this host's, "
                             f"e.g. {example})")
        elif not re.fullmatch(_DNS_NAME, host) or len(host) > 253:
            raise ValueError(f"{quote(host)} is not a host name or IP address (e.g. {example})")
    if port_text is None:
        if default_port is None:
            raise ValueError(f"{quote(text)} has no port: write HOST:PORT, e.g. {example}")
        return Endpoint(host, default_port)
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{quote(port_text)} is not a port: 1 to 65535")
    return Endpoint(host, int(port_text))


def parse_broker(text: str) -> Broker:
    """``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]``; raises ``ValueError``."""
    scheme, _, rest = text.partition("://")
    if scheme not in BROKER_PORTS:
        raise ValueError(f"{quote(text)} is not mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    if "@" in rest:
        raise ValueError("credentials do not belong in the URL: put the user name in "
                         "bus.username and the password in the file bus.password_file names")
    hostport, slash, tail = rest.partition("/")
    if slash and tail:
        raise ValueError(f"{quote(text)} has a path ('/{clip(tail)}'): a broker URL ends after "
                         "the port")
    endpoint = parse_endpoint(hostport, default_port=BROKER_PORTS[scheme], names=True)
    return Broker(cast(Literal["mqtt", "mqtts"], scheme), endpoint)


class _Builder:
    """Checks what the field table cannot and builds the model; problems go to ``rep``."""

    def __init__(self, rep: Reporter, base_dir: Path | None) -> None:
        self.rep, self.base_dir = rep, base_dir

    def build(self, top: Fields, hostname: str) -> DaemonConfig:
        return DaemonConfig(
            host=self.host(top, hostname),
            socket=self.socket(top),
            state_dir=self.path(top.get("state_dir")) or Path(DEFAULT_STATE_DIR),
            netns=top.get("netns"),
            netns_prefix=top.get("netns_prefix") or NETNS_PREFIX,
            log_level=top.get("log_level") or DEFAULT_LOG_LEVEL,
            datapath=self.datapath(_section(top, "datapath")),
            bus=self.bus(_section(top, "bus")),
            metrics=self.metrics(_section(top, "metrics")),
            access=self.access(_section(top, "access")),
            stop_all=top.get("stop_all") is True)

    def path(self, value: Any) -> Path | None:
        if not isinstance(value, str):
            return None
        path = Path(value)
        return self.base_dir / path if self.base_dir is not None else path

    def host(self, top: Fields, hostname: str) -> str:
        if "host" in top:
            return str(top.get("host") or "")
        short = hostname.split(".")[0]
        if not re.fullmatch(HOST_NAME, short):
            self.rep.missing(("host",), f"this machine's host name {quote(hostname)} is not a "
                             f"valid vnet host name ({HOST_NAME_WHY}): set host: to this "
                             "host's name under the topology's hosts:")
        return short

    def socket(self, top: Fields) -> Path:
        path = self.path(top.get("socket")) or Path(DEFAULT_SOCKET)
        size = len(os.fsencode(path))
        if size > MAX_SOCKET_PATH:
            self.rep.error(("socket",), f"{clip(str(path), PATH_LIMIT)} is {size} bytes long: a "
                           f"Unix socket path has at most {MAX_SOCKET_PATH}; choose a shorter one")
        return path

    def datapath(self, fields: Fields | None) -> DatapathConfig:
        if fields is None:
            return DatapathConfig()
        python = fields.get("python")
        if python is not None and shutil.which(python) is None:
            self.rep.error(("datapath", "python"), f"no interpreter {quote(python)} (not on PATH): "
                           "install it (apt-get install pypy3) or leave python: out to run "
                           "the datapath under vnetd's own Python")
        return DatapathConfig(python=python, io=fields.get("io") or DEFAULT_IO,
                              busy_poll_us=fields.get("busy_poll_us") or 0,
                              kernel_flows=fields.get("kernel_flows") is not False)

    def bus(self, fields: Fields | None) -> BusConfig | None:
        if fields is None:
            return None
        broker, broker_ok = Broker("mqtt", Endpoint("", 0)), False  # stand-in for a bad one
        if fields.ok("broker"):
            try:
                broker, broker_ok = parse_broker(fields.get("broker")), True
            except ValueError as err:
                self.rep.error(("bus", "broker"), str(err))
        password_file = self.path(fields.get("password_file"))
        if password_file is not None:
            self.check_file(("bus", "password_file"), password_file, secret=True)
        tls = self.tls(_section(fields, "tls"))
        if "tls" in fields and broker_ok and broker.scheme == "mqtt":
            self.rep.key_error(("bus", "tls"), "only used with an mqtts:// broker: write "
                               "mqtts://HOST[:PORT] as the broker, or remove tls:")
        return BusConfig(broker=broker, username=fields.get("username"),
                         password_file=password_file, tls=tls,
                         keepalive=fields.get("keepalive") or DEFAULT_KEEPALIVE,
                         topic_root=fields.get("topic_root") or DEFAULT_TOPIC_ROOT)

    def tls(self, fields: Fields | None) -> TlsConfig | None:
        if fields is None:
            return None
        files: dict[str, Path | None] = {}
        for key in ("ca_file", "cert_file", "key_file"):
            files[key] = path = self.path(fields.get(key))
            if path is not None:
                self.check_file(("bus", "tls", key), path, secret=key == "key_file")
        return TlsConfig(**files)

    def check_file(self, key: KeyPath, file: Path, *, secret: bool) -> None:
        """The file must exist; one that holds a secret must be root's, and only root's."""
        shown = clip(str(file), PATH_LIMIT)
        try:
            info = file.stat()
        except FileNotFoundError:
            self.rep.error(key, f"{shown} does not exist: give the path of an existing file")
            return
        except OSError as err:
            self.rep.error(key, f"cannot look at {shown}: {(err.strerror or str(err)).lower()}")
            return
        if not stat.S_ISREG(info.st_mode):
            self.rep.error(key, f"{shown} is not a regular file")
            return
        if not secret:
            return
        mode = stat.S_IMODE(info.st_mode)
        if info.st_uid not in (0, os.geteuid()):
            self.rep.error(key, f"{shown} belongs to uid {info.st_uid}, who could read or "
                           f"replace the secret in it: chown root {shown}")
        if mode & 0o077:
            who = "every user" if mode & 0o007 else "its group"
            self.rep.error(key, f"{shown} is open to {who} (mode {mode:04o}) but holds a secret: "
                           f"make it readable only by root (chmod 600 {shown})")

    def metrics(self, fields: Fields | None) -> MetricsConfig | None:
        if fields is None:
            return None
        listen = fields.get("listen")
        if listen is None:
            return MetricsConfig()
        try:
            return MetricsConfig(parse_endpoint(listen, default_port=None, names=False))
        except ValueError as err:
            self.rep.error(("metrics", "listen"), str(err))
            return MetricsConfig()

    def access(self, fields: Fields | None) -> AccessConfig:
        if fields is None:
            return AccessConfig()
        roles = _section(fields, "roles")
        lists = {role: tuple(roles.get(role) or ()) for role in ("viewer", "operator", "admin")
                 } if roles is not None else {}
        for role, holders in lists.items():
            for index, holder in enumerate(holders):
                if isinstance(holder, str) and not _principal_exists(holder):
                    self.rep.error(("access", "roles", role, index), _no_such_principal(holder))
        return AccessConfig(group=fields.get("group") or DEFAULT_ACCESS_GROUP,
                            roles=Roles(**lists))


def _principal_exists(holder: str) -> bool:
    try:
        if holder.startswith("@"):
            grp.getgrnam(holder[1:])
        else:
            pwd.getpwnam(holder)
    except KeyError:
        return False
    return True


def _no_such_principal(holder: str) -> str:
    if holder.startswith("@"):
        return (f"no group {quote(holder[1:])} on this machine: create it (groupadd "
                f"{holder[1:]}) or remove the entry")
    return (f"no user {quote(holder)} on this machine: create it (useradd {holder}), write "
            f"@{holder} if a group is meant, or remove the entry")


def _section(fields: Fields, key: str) -> Fields | None:
    """A nested mapping that was present and well-formed, else None."""
    value = fields.get(key)
    return value if isinstance(value, Fields) else None


def main() -> None:
    json.dump(json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
