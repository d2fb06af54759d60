"""Who may do what on vnetd's API: the decision, the names behind it, refusals, the audit."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import re
import typing
from pathlib import Path
from typing import Any

import pytest

from vnet.daemon import requests
from vnet.daemon.access import (
    OPERATIONS,
    Decision,
    Policy,
    Role,
    allowed,
    decide,
    read_only,
    refusal,
    resolve,
    role_of,
)
from vnet.daemon.api import ApiServer, describe_peer, operation_of, peer_of
from vnet.daemon.audit import AuditLog, Peer, entry
from vnet.daemon.config import AccessConfig, Roles

USERS = {"vera": 1002, "otto": 1001, "ada": 1000, "staff": 1006}
GROUPS = {"staff": 50, "ops": 60, "netadmin": 70, "vera": 1007}
ROLES = Roles(viewer=("vera", "@staff"), operator=("otto", "@ops"),
              admin=("ada", "@netadmin", "@ghost"))
POLICY = resolve(ROLES, USERS.get, GROUPS.get)


def test_names_resolve_to_uids_and_gids() -> None:
    assert dict(POLICY.users) == {1002: Role.VIEWER, 1001: Role.OPERATOR, 1000: Role.ADMIN}
    assert dict(POLICY.groups) == {50: Role.VIEWER, 60: Role.OPERATOR, 70: Role.ADMIN}


def test_a_name_under_two_roles_holds_the_higher() -> None:
    policy = resolve(Roles(viewer=("ada",), admin=("ada",)), USERS.get, GROUPS.get)
    assert dict(policy.users) == {1000: Role.ADMIN}


@pytest.mark.parametrize("uid,gids,role", [
    (0, [], Role.ADMIN),                  # root, with or without a passwd entry
    (1000, [], Role.ADMIN),
    (1001, [50], Role.OPERATOR),          # the highest role wins
    (1002, [], Role.VIEWER),
    (1003, [60], Role.OPERATOR),          # through a (supplementary) group
    (1004, [50, 70], Role.ADMIN),
    (1005, [999], None),                  # may connect (access.group), holds no role
    (1006, [], None),                     # a user named like a group is not the group
    (1007, [1007], None),                 # a group named like a user is not the user
])
def test_role_of(uid: int, gids: list[int], role: Role | None) -> None:
    assert role_of(uid, gids, POLICY) == role


OPERATIONS_BY_ROLE = {
    Role.VIEWER: {"ping", "status", "node", "fdb", "console.log", "trace.explain"},
    Role.OPERATOR: {"vm.start", "vm.stop", "vm.restart", "console.attach", "exec",
                    "trace.inject", "capture"},
    Role.ADMIN: {"up", "down", "reload", "shutdown"},
}


@pytest.mark.parametrize("uid,gids", [(0, []), (1002, []), (1001, []), (1000, []), (5, [])])
def test_decide_against_the_table(uid: int, gids: list[int]) -> None:
    held = role_of(uid, gids, POLICY)
    for needed, operations in OPERATIONS_BY_ROLE.items():
        for operation in operations:
            ok = held is not None and held >= needed
            assert decide(uid, gids, POLICY, operation) == Decision(ok, needed, held)
            assert allowed(held, operation) == ok
            assert read_only(operation) == (needed == Role.VIEWER)
    assert decide(0, [], POLICY, "no-such-operation") == Decision(False, None, Role.ADMIN)


def test_the_table_is_the_three_roles() -> None:
    assert set(OPERATIONS) == set().union(*OPERATIONS_BY_ROLE.values())


def test_every_api_request_has_an_entry() -> None:
    args = {"lab": "a", "node": "n", "text": "", "source": "s", "frame": "00",
            "command": ["true"]}
    for op, cls in requests.REQUESTS.items():
        names = [f.name for f in cls.__dataclass_fields__.values()]
        hints = typing.get_type_hints(cls)
        actions = list(typing.get_args(hints["action"])) if "action" in names else [None]
        for action in actions:
            fields = {n: args[n] for n in names if n in args}
            request = cls(**fields, **({"action": action} if action else {}))
            assert operation_of(request) in OPERATIONS, op


def test_the_refusal_names_the_role_and_how_to_get_it() -> None:
    text = refusal("up", Decision(False, Role.ADMIN, Role.VIEWER), "uid 1002, user vera",
                   "/etc/vnet/lab.yaml")
    assert text == ("permission denied: up needs the admin role and you (uid 1002, user vera) "
                    "hold the viewer role; an administrator can add your user name, or @GROUP "
                    "for a group of yours, to access.roles.admin in /etc/vnet/lab.yaml and "
                    "reload vnetd ('systemctl reload vnetd')")
    assert "hold no role" in refusal("status", Decision(False, Role.VIEWER, None), "uid 5")


def test_root_is_described_with_its_groups() -> None:
    peer = describe_peer(1234, 0, 0)
    assert peer == Peer(1234, 0, 0, "root", peer.gids) and 0 in peer.gids
    assert describe_peer(1, 4_000_000, 4_000_000).user is None   # no passwd entry


# ---- the audit ----------------------------------------------------------------------------

VERA = Peer(pid=77, uid=1002, gid=1002, user="vera", gids=(1002,))


def test_an_audit_entry() -> None:
    assert entry(VERA, "up", "lab1", None, 1_800_000_000.25) == {
        "time": "2027-01-15T08:00:00.250+00:00", "uid": 1002, "user": "vera", "pid": 77,
        "op": "up", "lab": "lab1", "result": "ok", "error": None}
    assert entry(VERA, "down", None, "no", 0)["result"] == "error"


def test_the_audit_file_is_rotated_at_its_cap(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.log", max_bytes=1000)
    for n in range(40):
        audit.record(entry(VERA, "up", f"lab{n}", None, n))
    current = (tmp_path / "audit.log").read_text().splitlines()
    previous = (tmp_path / "audit.log.1").read_text().splitlines()
    assert (tmp_path / "audit.log").stat().st_size <= 1000
    assert (tmp_path / "audit.log.1").stat().st_size <= 1000
    labs = [json.loads(line)["lab"] for line in previous + current]
    assert labs == [f"lab{n}" for n in range(40 - len(labs), 40)]   # the newest, in order
    assert (tmp_path / "audit.log").stat().st_mode & 0o777 == 0o600


def test_an_unwritable_audit_file_is_said_once(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    audit = AuditLog(tmp_path / "no-such-dir" / "audit.log")
    audit.record(entry(VERA, "up", "a", None, 0))
    audit.record(entry(VERA, "up", "b", None, 0))
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "cannot write the audit file" in errors[0]
    assert "Errno" not in errors[0]


# ---- the server enforces it --------------------------------------------------------------

def server(tmp_path: Path, policy: AccessConfig) -> tuple[ApiServer, list[str]]:
    ran: list[str] = []

    async def handler(request: Any) -> Any:
        ran.append(operation_of(request))
        return {"lab": "from-result"} if request.op == "up" else {"op": request.op}

    return ApiServer(tmp_path / "s.sock", dict.fromkeys(requests.REQUESTS, handler),
                     access_config=policy, audit=AuditLog(tmp_path / "audit.log"),
                     config_file=Path("/etc/vnet/t.yaml")), ran


def test_the_server_refuses_before_the_handler_and_audits_changes(tmp_path: Path) -> None:
    api, ran = server(tmp_path, AccessConfig(roles=Roles(viewer=("nobody",))))
    nobody = describe_peer(42, 65534, 65534)
    assert nobody.user == "nobody"

    def ask(line: bytes) -> dict[str, Any]:
        return asyncio.run(api.handle(line, nobody))

    assert ask(b'{"op": "status"}') == {"ok": True, "result": {"op": "status"}}
    refused = ask(b'{"op": "vm", "action": "stop", "node": "n", "lab": "l1"}')
    assert refused["ok"] is False
    assert refused["error"].startswith("permission denied: vm.stop needs the operator role "
                                       "and you (uid 65534, user nobody) hold the viewer role")
    assert "access.roles.operator in /etc/vnet/t.yaml" in refused["error"]
    assert ask(b'{"op": "up", "text": "", "source": "f"}')["ok"] is False
    assert ran == ["status"]
    assert asyncio.run(api.handle(b'{"op": "up", "text": "", "source": "f"}'))["ok"]  # root
    lines = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert [(e["uid"], e["user"], e["pid"], e["op"], e["lab"], e["result"]) for e in lines] == [
        (65534, "nobody", 42, "vm.stop", "l1", "error"),
        (65534, "nobody", 42, "up", None, "error"),
        (0, "root", lines[2]["pid"], "up", "from-result", "ok")]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+\+00:00", e["time"]) for e in lines)


def test_a_reload_of_the_roles_holds_for_the_next_request(tmp_path: Path) -> None:
    api, _ = server(tmp_path, AccessConfig())
    nobody = describe_peer(42, 65534, 65534)
    assert not asyncio.run(api.handle(b'{"op": "ping"}', nobody))["ok"]
    api.set_access(AccessConfig(roles=Roles(viewer=("@nogroup",))))
    assert asyncio.run(api.handle(b'{"op": "ping"}', nobody))["ok"]


def test_policy_default_is_root_only() -> None:
    assert resolve(Roles()) == Policy()
    assert role_of(1, [1], resolve(Roles())) is None


def test_the_socket_is_0660_and_group_owned(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a socket to another group needs root")

    async def start(group: str) -> os.stat_result:
        api, _ = server(tmp_path, AccessConfig(group=group))
        await api.start()
        try:
            return api.path.stat()
        finally:
            await api.stop()

    info = asyncio.run(start("staff"))
    assert (info.st_mode & 0o777, info.st_gid) == (0o660, grp.getgrnam("staff").gr_gid)
    info = asyncio.run(start("vnet-no-such-group"))
    assert (info.st_mode & 0o777, info.st_gid) == (0o660, 0)
    assert any("access.group 'vnet-no-such-group' does not exist: the API socket" in
               r.getMessage() and "stays root's alone" in r.getMessage()
               for r in caplog.records)


def test_the_peer_of_a_real_connection(tmp_path: Path) -> None:
    seen: list[Peer] = []

    async def scenario() -> None:
        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(peer_of(writer))
            writer.close()

        listener = await asyncio.start_unix_server(client, path=str(tmp_path / "p.sock"))
        _, writer = await asyncio.open_unix_connection(str(tmp_path / "p.sock"))
        while not seen:
            await asyncio.sleep(0.01)
        writer.close()
        listener.close()

    asyncio.run(scenario())
    assert seen == [describe_peer(os.getpid(), os.geteuid(), os.getegid())]
