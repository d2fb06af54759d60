"""Who may do what through vnetd's API socket: roles, the one table of operations, the decision.

Three roles, each allowed everything the one below it is: a *viewer* reads (status, MAC
tables, console logs), an *operator* also works the nodes (VM start, stop and restart,
console attach, exec), an *admin* also changes the labs and the daemon (up, down, reload,
shutdown).  ``access.roles`` in the config file gives roles to user names and to groups
(``@group``); root (uid 0) is always admin.

The names are resolved once, when the config is loaded (``resolve``: the user and group
databases), into a ``Policy`` of uids and gids; ``decide`` is then a pure function of the
peer's uid and gids (``SO_PEERCRED`` and ``os.getgrouplist`` at the API edge), the policy and
the operation, unit-tested without root.
"""

from __future__ import annotations

import enum
import grp
import pwd
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from vnet.daemon.config import DEFAULT_CONFIG_FILE, AccessConfig, Roles


class Role(enum.IntEnum):
    """Ordered: a higher role may do everything a lower one may."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    def __str__(self) -> str:
        return self.name.lower()


OPERATIONS: Mapping[str, Role] = MappingProxyType({
    # viewer: reading
    "ping": Role.VIEWER,
    "status": Role.VIEWER,
    "node": Role.VIEWER,  # where a node lives (its namespace, NICs): what status shows
    "fdb": Role.VIEWER,
    "trace.explain": Role.VIEWER,  # on the live tables, changing nothing
    "console.log": Role.VIEWER,
    # operator: working the nodes
    "vm.start": Role.OPERATOR,
    "vm.stop": Role.OPERATOR,
    "vm.restart": Role.OPERATOR,
    "console.attach": Role.OPERATOR,
    "exec": Role.OPERATOR,
    "trace.inject": Role.OPERATOR,  # really sends a frame into the lab
    # the frames' contents (an exec'd tcpdump shows no more), and it costs the datapath work
    "capture": Role.OPERATOR,
    # admin: changing the labs and the daemon
    "up": Role.ADMIN,
    "down": Role.ADMIN,
    "reload": Role.ADMIN,
    "shutdown": Role.ADMIN,
})
"""The least role each operation needs.  An operation not listed is refused to everyone."""


def read_only(operation: str) -> bool:
    """Does ``operation`` only read?  (Everything else is audited.)"""
    return OPERATIONS.get(operation) == Role.VIEWER


@dataclass(frozen=True)
class Policy:
    """``access.roles`` resolved: the role of each uid and gid named (the highest, when a
    name is listed under several roles)."""

    users: Mapping[int, Role] = field(default_factory=dict)
    groups: Mapping[int, Role] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    needed: Role | None   # None: no such operation
    held: Role | None     # None: the peer holds no role


def role_of(uid: int, gids: Iterable[int], policy: Policy) -> Role | None:
    """The highest role the peer holds: root is admin; else the best of its user's and its
    groups' roles.  None: no role, no access."""
    if uid == 0:
        return Role.ADMIN
    held = [policy.users[uid]] if uid in policy.users else []
    held += [policy.groups[gid] for gid in gids if gid in policy.groups]
    return max(held, default=None)


def decide(uid: int, gids: Iterable[int], policy: Policy, operation: str) -> Decision:
    """May the peer (``uid``, every group it is in) do ``operation`` under ``policy``?"""
    needed = OPERATIONS.get(operation)
    held = role_of(uid, gids, policy)
    return Decision(needed is not None and held is not None and held >= needed, needed, held)


def allowed(role: Role | None, operation: str) -> bool:
    """May ``role`` do ``operation``?  No role may do nothing; unknown operations nobody."""
    needed = OPERATIONS.get(operation)
    return role is not None and needed is not None and role >= needed


def refusal(operation: str, decision: Decision, who: str,
            config_file: str | None = None) -> str:
    """What a refused caller reads: the role it needs, the one it has, and how to get it."""
    if decision.needed is None:
        return f"permission denied: {operation} is not an operation anyone may do"
    has = f"you ({who}) hold the {decision.held} role" if decision.held else \
        f"you ({who}) hold no role"
    where = config_file or str(DEFAULT_CONFIG_FILE)
    return (f"permission denied: {operation} needs the {decision.needed} role and {has}; "
            f"an administrator can add your user name, or @GROUP for a group of yours, to "
            f"access.roles.{decision.needed} in {where} and reload vnetd "
            f"('systemctl reload vnetd')")


UserLookup = Callable[[str], int | None]


def lookup_user(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def lookup_group(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def resolve(roles: Roles, users: UserLookup = lookup_user,
            groups: UserLookup = lookup_group) -> Policy:
    """``roles``' names as uids and gids; a name that resolves to nothing grants nothing
    (the config check reports such names at their line, ``config.Builder.access``)."""
    by_uid: dict[int, Role] = {}
    by_gid: dict[int, Role] = {}
    for role, holders in ((Role.VIEWER, roles.viewer), (Role.OPERATOR, roles.operator),
                          (Role.ADMIN, roles.admin)):
        for holder in holders:
            table, ident = ((by_gid, groups(holder[1:])) if holder.startswith("@")
                            else (by_uid, users(holder)))
            if ident is not None:
                table[ident] = max(role, table.get(ident, role))
    return Policy(MappingProxyType(by_uid), MappingProxyType(by_gid))


def policy_of(access: AccessConfig) -> Policy:
    return resolve(access.roles)
