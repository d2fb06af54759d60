"""vnetd's config file: model, every kind of problem with its line, schema, flags, roles."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from textwrap import dedent
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vnet.daemon import config as cfg
from vnet.daemon.config import (
    AccessConfig,
    Broker,
    BusConfig,
    ConfigError,
    DaemonConfig,
    DatapathConfig,
    Endpoint,
    MetricsConfig,
    Roles,
    TlsConfig,
    datapath_environment,
    json_schema,
    load_config,
    parse_broker,
    parse_config,
    parse_endpoint,
    with_flags,
)
from vnet.daemon.main import configure, parse_args
from vnet.topology.yamlcompose import LIBYAML

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "vnet" / "daemon" / "vnetd.schema.json"
EXAMPLE = ROOT / "systemd" / "vnetd.yaml.example"
VALIDATOR = jsonschema.Draft202012Validator(json_schema())


def secret(path: Path, mode: int = 0o600) -> Path:
    path.write_text("s3cret\n")
    path.chmod(mode)
    return path


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A config directory with the files a full config names."""
    secret(tmp_path / "mqtt.password")
    secret(tmp_path / "host-a.key")
    (tmp_path / "ca.pem").write_text("CA\n")
    (tmp_path / "host-a.pem").write_text("CERT\n")
    return tmp_path


FULL = """\
version: 1
host: host-a
socket: /run/vnet/a.sock
state_dir: state            # relative: to the file's directory
netns: hostA
netns_prefix: suite-7
log_level: debug
datapath: {python: %(python)s, io: socket, busy_poll_us: 0}
bus:
  broker: mqtts://[fd00::1]
  username: host-a
  password_file: mqtt.password
  tls: {ca_file: ca.pem, cert_file: host-a.pem, key_file: host-a.key}
  keepalive: 30
  topic_root: lab/v1
metrics: {listen: "0.0.0.0:9100"}
access:
  group: vnetusers
  roles: {viewer: ["@staff", nobody], operator: [daemon], admin: ["@adm"]}
"""


def test_a_full_file_gives_the_dataclass(files: Path) -> None:
    path = files / "vnetd.yaml"
    path.write_text(FULL % {"python": sys.executable})
    assert load_config(path, hostname="ignored") == DaemonConfig(
        host="host-a", socket=Path("/run/vnet/a.sock"), state_dir=files / "state",
        netns="hostA", netns_prefix="suite-7", log_level="debug",
        datapath=DatapathConfig(python=sys.executable, io="socket", busy_poll_us=0),
        bus=BusConfig(broker=Broker("mqtts", Endpoint("fd00::1", 8883)), username="host-a",
                      password_file=files / "mqtt.password",
                      tls=TlsConfig(ca_file=files / "ca.pem", cert_file=files / "host-a.pem",
                                    key_file=files / "host-a.key"),
                      keepalive=30, topic_root="lab/v1"),
        metrics=MetricsConfig(Endpoint("0.0.0.0", 9100)),
        access=AccessConfig(group="vnetusers", roles=Roles(
            viewer=("@staff", "nobody"), operator=("daemon",), admin=("@adm",))),
        source=path)


def test_an_empty_file_gives_the_defaults_and_the_short_host_name() -> None:
    config = parse_config("# nothing but a comment\n", "e.yaml", hostname="node1.example.org")
    assert config == DaemonConfig(host="node1", source=Path("e.yaml"))
    assert config.socket == Path("/run/vnet/vnetd.sock")
    assert config.state_dir == Path("/var/lib/vnet")
    assert config.netns_prefix == "vnet"
    assert config.datapath == DatapathConfig(python=None, io="ring", busy_poll_us=100)
    assert config.bus is None and config.metrics is None
    assert config.access == AccessConfig(group="vnet", roles=Roles())


def test_sections_given_empty_take_their_defaults() -> None:
    config = parse_config("metrics: {}\naccess: {}\ndatapath: {}\n"
                          "bus: {broker: 'mqtt://broker'}\n", hostname="h")
    assert config.metrics == MetricsConfig(Endpoint("127.0.0.1", 9470))
    assert config.bus == BusConfig(broker=Broker("mqtt", Endpoint("broker", 1883)))
    assert config.bus.keepalive == 60 and config.bus.topic_root == "vnet/v1"


def test_a_missing_default_file_is_fine_a_missing_given_file_is_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cfg, "DEFAULT_CONFIG_FILE", tmp_path / "absent.yaml")
    assert load_config(hostname="h") == DaemonConfig(host="h", source=None)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "typo.yaml", hostname="h")
    assert info.value.problems == [
        f"{tmp_path}/typo.yaml: no such file: give --config an existing file, or leave "
        f"--config out to use {tmp_path}/absent.yaml if it exists"]


def test_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes(b"host: caf\xe9\n")
    for path, problem in ((tmp_path, f"{tmp_path}: is a directory, not a config file"),
                          (tmp_path / "latin1.yaml", f"{tmp_path}/latin1.yaml:1: not UTF-8 "
                           "text (invalid continuation byte)")):
        with pytest.raises(ConfigError) as info:
            load_config(path, hostname="h")
        assert info.value.problems == [problem]


# -- every kind of problem, with its line -------------------------------------------------------

def problems(text: str, hostname: str = "h") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(dedent(text).lstrip("\n"), "c.yaml", hostname=hostname)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


ALLOWED = ("access, bus, datapath, host, log_level, metrics, netns, netns_prefix, socket, "
           "state_dir, stop_all, version")
CASES: dict[str, tuple[str, list[str]]] = {
    "unknown keys, with and without a suggestion": ("""
        hots: a
        zzz: 1
        """, [f"c.yaml:1: hots: unknown key 'hots'; did you mean 'host'? (allowed: {ALLOWED})",
              f"c.yaml:2: zzz: unknown key 'zzz' (allowed: {ALLOWED})"]),
    "nested unknown key": ("""
        datapath:
          io: ring
          busy_pol_us: 5
        """, ["c.yaml:3: datapath.busy_pol_us: unknown key 'busy_pol_us'; did you mean "
              "'busy_poll_us'? (allowed: busy_poll_us, io, kernel_flows, python)"]),
    "types, enums and ranges": ("""
        version: 2
        log_level: verbose
        socket: 5
        datapath: {io: rings, busy_poll_us: -1}
        """, ["c.yaml:1: version: 2 is not supported: the only value is 1",
              "c.yaml:2: log_level: 'verbose' is not one of debug | info | warning | error | "
              "critical",
              "c.yaml:3: socket: expected a string, got an integer (5): quote it (\"5\")",
              "c.yaml:4: datapath.io: 'rings' is not one of ring | socket; did you mean 'ring'?",
              "c.yaml:4: datapath.busy_poll_us: -1 is out of range 0..100000"]),
    "a host name that a topology's hosts: could not hold": ("""
        host: host a
        """, ["c.yaml:1: host: 'host a' must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$ (a letter "
              "or digit, then up to 62 letters, digits, '_', '.' or '-')"]),
    "not a mapping": ("""
        - host: a
        """, ["c.yaml:1: expected a mapping, got a list"]),
    "invalid YAML": ("""
        host: [a
        """, ["c.yaml:2: invalid YAML: " + (
            "did not find expected ',' or ']'" if LIBYAML
            else "expected ',' or ']', but got '<stream end>'")
            + " (while parsing a flow sequence at line 1)"]),
    "duplicate key": ("""
        log_level: info
        log_level: debug
        """, ["c.yaml:2: log_level: duplicate key 'log_level' (first at line 1): YAML would "
              "silently keep only the last one; remove one"]),
    "namespace prefixes that cannot start a short namespace name": ("""
        log_level: info
        netns_prefix: Vnet_2
        """, ["c.yaml:2: netns_prefix: 'Vnet_2' must match ^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$ "
              "(1 to 20 lower-case letters, digits or '-', starting and ending with a letter or "
              "digit)"]),
    "a socket path too long for a Unix socket": (f"""
        socket: /run/{'s' * 110}
        """, [f"c.yaml:1: socket: /run/{'s' * 110} is 115 bytes long: a Unix socket path has at "
              "most 107; choose a shorter one"]),
    "a datapath interpreter that is not there": ("""
        datapath: {python: no-such-pypy}
        """, ["c.yaml:1: datapath.python: no interpreter 'no-such-pypy' (not on PATH): install "
              "it (apt-get install pypy3) or leave python: out to run the datapath under "
              "vnetd's own Python"]),
    "bus without broker, password without user": ("""
        bus:
          password_file: /nonexistent/pw
          keepalive: 0
        """, ["c.yaml:1: bus.broker: required key is missing",
              "c.yaml:2: bus.password_file: only allowed together with username",
              "c.yaml:2: bus.password_file: /nonexistent/pw does not exist: give the path of an "
              "existing file",
              "c.yaml:3: bus.keepalive: 0 is out of range 1..65535"]),
    "tls with a plain mqtt broker, and missing files": ("""
        bus:
          broker: mqtt://broker:1883
          tls:
            ca_file: /nonexistent/ca.pem
            cert_file: /nonexistent/c.pem
        """, ["c.yaml:3: bus.tls: only used with an mqtts:// broker: write mqtts://HOST[:PORT] "
              "as the broker, or remove tls:",
              "c.yaml:4: bus.tls.ca_file: /nonexistent/ca.pem does not exist: give the path of "
              "an existing file",
              "c.yaml:5: bus.tls.cert_file: only allowed together with key_file",
              "c.yaml:5: bus.tls.cert_file: /nonexistent/c.pem does not exist: give the path "
              "of an existing file"]),
    "a metrics address that is not IP:PORT": ("""
        metrics: {listen: "localhost:9470"}
        """, ["c.yaml:1: metrics.listen: 'localhost:9470' must match "
              r"^(\[[0-9A-Fa-f:.]+\]|[0-9]{1,3}(\.[0-9]{1,3}){3}):[0-9]{1,5}$ (IP:PORT, e.g. "
              "127.0.0.1:9470 or [::1]:9470)"]),
    "access entries: their shape": ("""
        access:
          group: "vnet users"
          roles:
            viewer: [root, "@staff", "@"]
            operator: [daemon, daemon]
            operater: [nobody]
        """, ["c.yaml:2: access.group: 'vnet users' must match ^[A-Za-z_][A-Za-z0-9_.-]{0,31}$ "
              "(a group name)",
              "c.yaml:4: access.roles.viewer[2]: '@' must match "
              "^@?[A-Za-z_][A-Za-z0-9_.-]{0,31}$ (a user name, or @group for every member of "
              "that group)",
              "c.yaml:5: access.roles.operator[1]: 'daemon' is listed twice (first at [0])",
              "c.yaml:6: access.roles.operater: unknown key 'operater'; did you mean "
              "'operator'? (allowed: admin, operator, viewer)"]),
    "access entries: users and groups that do not exist": ("""
        access:
          roles:
            viewer: [root, vnet-no-such-user, "@staff"]
            admin: ["@vnet-no-such-group"]
        """, ["c.yaml:3: access.roles.viewer[1]: no user 'vnet-no-such-user' on this machine: "
              "create it (useradd vnet-no-such-user), write @vnet-no-such-user if a group is "
              "meant, or remove the entry",
              "c.yaml:4: access.roles.admin[0]: no group 'vnet-no-such-group' on this machine: "
              "create it (groupadd vnet-no-such-group) or remove the entry"]),
}


@pytest.mark.parametrize("text,expected", CASES.values(), ids=CASES.keys())
def test_problems(text: str, expected: list[str]) -> None:
    assert problems(text) == expected


@pytest.mark.parametrize("url,problem", [
    ("http://broker", "'http://broker' must match ^mqtts?://\\S+$ (mqtt://HOST[:PORT] or "
     "mqtts://HOST[:PORT])"),
    ("mqtt://u:p@broker", "credentials do not belong in the URL: put the user name in "
     "bus.username and the password in the file bus.password_file names"),
    ("mqtt://broker/topic", "'mqtt://broker/topic' has a path ('/topic'): a broker URL ends "
     "after the port"),
    ("mqtt://broker:0", "'0' is not a port: 1 to 65535"),
    ("mqtt://broker:", "'' is not a port: 1 to 65535"),
    ("mqtt://fd00::1:1883", "'fd00::1:1883': an IPv6 address goes in brackets, e.g. "
     "mqtt://broker.example:1883"),
    ("mqtt://[fd00::zz]", "'[fd00::zz]': brackets hold an IPv6 address, e.g. [fd00::1]:9470"),
    ("mqtt://300.1.1.1", "'300.1.1.1' is not an IPv4 address"),
    ("mqtt://-broker", "'-broker' is not a host name or IP address (e.g. "
     "mqtt://broker.example:1883)"),
])
def test_broker_problems_are_reported_at_the_broker_line(url: str, problem: str) -> None:
    assert problems(f"log_level: info\nbus:\n  broker: '{url}'\n") == [
        f"c.yaml:3: bus.broker: {problem}"]


def test_brokers_and_listen_addresses() -> None:
    assert parse_broker("mqtt://broker") == Broker("mqtt", Endpoint("broker", 1883))
    assert parse_broker("mqtts://10.0.0.1:18883/") == Broker("mqtts", Endpoint("10.0.0.1",
                                                                                18883))
    assert parse_broker("mqtts://[FD00::1]:1").url == "mqtts://[fd00::1]:1"
    assert parse_endpoint("[::1]:9470", default_port=None, names=False) == Endpoint("::1", 9470)
    with pytest.raises(ValueError, match="has no port"):
        parse_endpoint("127.0.0.1", default_port=None, names=False)
    with pytest.raises(ValueError, match="is not an IP address"):
        parse_endpoint("localhost:9470", default_port=None, names=False)
    assert problems('metrics: {listen: "127.0.0.1:70000"}\n') == [
        "c.yaml:1: metrics.listen: '70000' is not a port: 1 to 65535"]
    assert problems('metrics: {listen: "256.0.0.1:9470"}\n') == [
        "c.yaml:1: metrics.listen: '256.0.0.1' is not an IPv4 address"]


def test_a_machine_host_name_that_is_not_valid_needs_host() -> None:
    assert problems("log_level: info\n", hostname="bad host") == [
        "c.yaml:1: host: this machine's host name 'bad host' is not a valid vnet host name (a "
        "letter or digit, then up to 62 letters, digits, '_', '.' or '-'): set host: to this "
        "host's name under the topology's hosts:"]
    assert parse_config("host: good\n", hostname="bad host").host == "good"


# -- secrets ------------------------------------------------------------------------------------

def bus_with(password: Path, key: Path | None = None) -> str:
    tls = f"\n  tls: {{cert_file: {key}.pem, key_file: {key}}}" if key else ""
    return (f"bus:\n  broker: mqtts://b\n  username: u\n  password_file: {password}{tls}\n")


def test_a_password_file_only_root_may_read_is_accepted(tmp_path: Path) -> None:
    config = parse_config(bus_with(secret(tmp_path / "pw")), hostname="h")
    assert config.bus is not None and config.bus.password_file == tmp_path / "pw"


@pytest.mark.parametrize("mode,who", [(0o644, "every user"), (0o604, "every user"),
                                      (0o640, "its group")])
def test_a_password_file_others_may_read_is_refused(tmp_path: Path, mode: int,
                                                    who: str) -> None:
    pw = secret(tmp_path / "pw", mode)
    assert problems(bus_with(pw)) == [
        f"c.yaml:4: bus.password_file: {pw} is open to {who} (mode {mode:04o}) but holds a "
        f"secret: make it readable only by root (chmod 600 {pw})"]


def test_a_world_readable_tls_key_is_refused(tmp_path: Path) -> None:
    key = secret(tmp_path / "k", 0o644)
    (tmp_path / "k.pem").write_text("CERT\n")
    assert problems(bus_with(secret(tmp_path / "pw"), key)) == [
        f"c.yaml:5: bus.tls.key_file: {key} is open to every user (mode 0644) but holds a "
        f"secret: make it readable only by root (chmod 600 {key})"]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_password_file_another_user_owns_is_refused(tmp_path: Path) -> None:
    pw = secret(tmp_path / "pw")
    os.chown(pw, 65534, 65534)
    assert problems(bus_with(pw)) == [
        f"c.yaml:4: bus.password_file: {pw} belongs to uid 65534, who could read or replace "
        f"the secret in it: chown root {pw}"]


def test_a_directory_is_not_a_password_file(tmp_path: Path) -> None:
    assert problems(bus_with(tmp_path)) == [
        f"c.yaml:4: bus.password_file: {tmp_path} is not a regular file"]


# -- the published schema -----------------------------------------------------------------------

def test_checked_in_schema_is_current() -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == json_schema(), (
        "vnet/daemon/vnetd.schema.json is stale; regenerate it with\n"
        "    python -m vnet.daemon.config > vnet/daemon/vnetd.schema.json")


def test_schema_is_valid_refuses_unknown_keys_and_describes_every_field() -> None:
    jsonschema.Draft202012Validator.check_schema(json_schema())
    objects: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                objects.append(node)
            for value in node.values():
                walk(value)

    walk(json_schema())
    assert len(objects) == 7  # top, datapath, bus, tls, metrics, access, roles
    for obj in objects:
        assert obj["additionalProperties"] is False
        assert all(prop.get("description") for prop in obj["properties"].values())
    roles = json_schema()["properties"]["access"]["properties"]["roles"]
    assert "@group" in roles["description"] and "must exist" in roles["description"]


def test_schema_defaults_are_the_dataclass_defaults() -> None:
    defaults = DaemonConfig(host="h")
    table = cfg.DAEMON.fields
    assert Path(table["socket"].default) == defaults.socket
    assert Path(table["state_dir"].default) == defaults.state_dir
    assert table["log_level"].default == defaults.log_level
    assert table["netns_prefix"].default == defaults.netns_prefix
    dp = cfg.DATAPATH.fields
    assert (dp["io"].default, dp["busy_poll_us"].default) == (
        defaults.datapath.io, defaults.datapath.busy_poll_us)
    assert cfg.METRICS.fields["listen"].default == str(MetricsConfig().listen)
    assert cfg.ACCESS.fields["group"].default == defaults.access.group
    bus = BusConfig(broker=Broker("mqtt", Endpoint("b", 1883)))
    assert cfg.BUS.fields["keepalive"].default == bus.keepalive
    assert cfg.BUS.fields["topic_root"].default == bus.topic_root


def test_the_datapath_default_is_the_datapath_s_own() -> None:
    from vnet.datapath.engine import BUSY_POLL
    assert DatapathConfig().busy_poll_us * 1e-6 == pytest.approx(BUSY_POLL)


def readme_example() -> Any:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### The daemon config file"):]
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S)[1])  # type: ignore[index]


def test_the_shipped_examples_validate() -> None:
    VALIDATOR.validate(yaml.safe_load(EXAMPLE.read_text()))
    assert load_config(EXAMPLE, hostname="h") == DaemonConfig(host="h", source=EXAMPLE)
    key_line = re.compile(r"^#(?=\s*[a-z_]+:(\s|$))")  # a commented-out key, with its value
    uncommented = "\n".join(key_line.sub("", line) for line in EXAMPLE.read_text().splitlines())
    VALIDATOR.validate(yaml.safe_load(uncommented))
    VALIDATOR.validate(readme_example())


BAD = {
    "unknown key": {"hots": "a"},
    "nested unknown key": {"bus": {"broker": "mqtt://b", "usr": "u"}},
    "bad enum": {"datapath": {"io": "rings"}},
    "out of range": {"datapath": {"busy_poll_us": 100_001}},
    "bad host": {"host": "-a b"},
    "bad namespace prefix": {"netns_prefix": "-vnet"},
    "long namespace prefix": {"netns_prefix": "a" * 21},
    "bus without broker": {"bus": {}},
    "password without user": {"bus": {"broker": "mqtt://b", "password_file": "/p"}},
    "cert without key": {"bus": {"broker": "mqtts://b", "tls": {"cert_file": "/c"}}},
    "listen without port": {"metrics": {"listen": "127.0.0.1"}},
    "listen with a name": {"metrics": {"listen": "localhost:9470"}},
    "bad principal": {"access": {"roles": {"admin": ["al ice"]}}},
    "twice in a role": {"access": {"roles": {"admin": ["a", "a"]}}},
    "not a mapping": [],
}


@pytest.mark.parametrize("doc", BAD.values(), ids=BAD.keys())
def test_bad_documents_fail_both_schema_and_loader(doc: Any) -> None:
    assert list(VALIDATOR.iter_errors(doc)), "the schema accepted it"
    with pytest.raises(ConfigError):
        parse_config(json.dumps(doc), hostname="h")


RICH_YAML = FULL % {"python": sys.executable}
RICH = yaml.safe_load(RICH_YAML)


def _paths(value: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*prefix, i))
    return out


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 200_000)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["", "a", "@g", "ring", "info", "mqtt://b", "mqtts://b:1", "1.2.3.4:5",
                       "/x", "ca.pem", "a" * 70]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["listen", "broker", "io", "x", "viewer"]), inner, max_size=3),
    max_leaves=6)


@pytest.fixture(scope="module")
def rich_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("rich")
    for name in ("mqtt.password", "host-a.key"):
        secret(directory / name)
    for name in ("ca.pem", "host-a.pem"):
        (directory / name).write_text("PEM\n")
    return directory


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(_paths(RICH)), value=json_values)
def test_what_the_schema_rejects_the_loader_rejects(rich_dir: Path, path: tuple[str | int, ...],
                                                    value: Any) -> None:
    doc: Any = json.loads(json.dumps(RICH))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    try:
        parse_config(json.dumps(doc), base_dir=rich_dir, hostname="h")
    except ConfigError:
        return  # the loader may be stricter (files, URLs, addresses)
    assert not list(VALIDATOR.iter_errors(doc)), f"only the schema refuses {path} = {value!r}"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_a_config_or_a_config_error(text: str) -> None:
    try:
        parse_config(text, hostname="h")
    except ConfigError as err:
        assert err.problems and all(p.startswith("<string>:") for p in err.problems)


# -- flags over the environment over the file ------------------------------------------------

def test_flags_override_the_file() -> None:
    config = parse_config("socket: /a.sock\nstate_dir: /a\nnetns: na\nlog_level: error\n"
                          f"datapath: {{python: {sys.executable}, io: socket}}\n", hostname="h")
    assert with_flags(config) == config
    over = with_flags(config, socket="/b.sock", state_dir="rel", netns="nb", log_level="DEBUG",
                      datapath_python="pypy3")
    assert over == DaemonConfig(
        host="h", socket=Path("/b.sock"), state_dir=Path("rel"), netns="nb", log_level="debug",
        datapath=DatapathConfig(python="pypy3", io="socket"))


def test_the_command_line_over_the_environment_over_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "vnetd.yaml"
    path.write_text(f"socket: /file.sock\nlog_level: error\ndatapath: {{python: {sys.executable}}}"
                    "\n")
    monkeypatch.delenv("VNET_DATAPATH_PYTHON", raising=False)
    file_only = configure(parse_args(["--config", str(path)]))
    assert (file_only.socket, file_only.log_level, file_only.datapath.python) == (
        Path("/file.sock"), "error", sys.executable)
    monkeypatch.setenv("VNET_DATAPATH_PYTHON", "from-env")
    assert configure(parse_args(["--config", str(path)])).datapath.python == "from-env"
    flags = configure(parse_args(["--config", str(path), "--socket", "/flag.sock",
                                  "--log-level", "DEBUG", "--datapath-python", "from-flag"]))
    assert (flags.socket, flags.log_level, flags.datapath.python) == (
        Path("/flag.sock"), "debug", "from-flag")


def test_datapath_settings_travel_in_the_variables_the_datapath_reads() -> None:
    config = parse_config("datapath: {io: socket, busy_poll_us: 0, kernel_flows: false}\n",
                          hostname="h")
    assert datapath_environment(config) == {"VNET_DATAPATH_IO": "socket",
                                            "VNET_DATAPATH_BUSY_POLL_US": "0",
                                            "VNET_DATAPATH_KERNEL_FLOWS": "off"}
    assert datapath_environment(parse_config("", hostname="h"))[
        "VNET_DATAPATH_KERNEL_FLOWS"] == "on"
    from vnet.datapath import main as datapath_main
    source = Path(datapath_main.__file__).read_text()
    assert all(name in source for name in datapath_environment(config))


# -- vnetd --check-config, and start-up with a bad file ---------------------------------------

def vnetd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vnet.daemon.main", *args],
                          capture_output=True, text=True, timeout=60)


def test_check_config_on_the_command_line(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("log_level: debug\n")
    bad.write_text("log_level: debug\ndatapath:\n  io: rings\nmetrix: {}\n")
    result = vnetd("--check-config", "--config", str(good))
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")
    result = vnetd("--check-config", "--config", str(bad))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{bad}:3: datapath.io: 'rings' is not one of ring | socket; did you mean 'ring'?",
        f"{bad}:4: metrix: unknown key 'metrix'; did you mean 'metrics'? (allowed: {ALLOWED})"]
    # Starting with the bad file is refused the same way, before anything is touched.
    started = vnetd("--config", str(bad), "--state-dir", str(tmp_path / "state"),
                    "--socket", str(tmp_path / "s.sock"))
    assert (started.returncode, started.stderr) == (2, result.stderr)
    assert not (tmp_path / "state").exists()
    missing = vnetd("--check-config", "--config", str(tmp_path / "typo.yaml"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.startswith(f"{tmp_path}/typo.yaml: no such file")


