"""Who may do what through vnetd's API socket: roles, and the one table of operations.

Three roles, each allowed everything the one below it is: a *viewer* reads (status, MAC
tables, console logs), an *operator* also works the nodes (VM start, stop and restart,
console attach, exec), an *admin* also changes the labs and the daemon (up, down, reload,
shutdown).  ``access.roles`` in the config file gives roles to user names and to groups
(``@group``); root is always admin.  Both functions are pure: the API edge gets the peer's
uid and groups (``SO_PEERCRED``, the user and group databases) and asks.  Not wired in yet.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from vnet.daemon.config import DaemonConfig


class Role(enum.IntEnum):
    """Ordered: a higher role may do everything a lower one may."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3


OPERATIONS: Mapping[str, Role] = MappingProxyType({
    # viewer: reading
    "ping": Role.VIEWER,
    "status": Role.VIEWER,
    "node": Role.VIEWER,  # where a node lives (its namespace, NICs): what status shows
    "fdb": Role.VIEWER,
    "console.log": Role.VIEWER,
    # operator: working the nodes
    "vm.start": Role.OPERATOR,
    "vm.stop": Role.OPERATOR,
    "vm.restart": Role.OPERATOR,
    "console.attach": Role.OPERATOR,
    "exec": Role.OPERATOR,
    # admin: changing the labs and the daemon
    "up": Role.ADMIN,
    "down": Role.ADMIN,
    "reload": Role.ADMIN,
    "shutdown": Role.ADMIN,
})
"""The least role each operation needs.  An operation not listed is refused to everyone."""


def role_of(config: DaemonConfig, uid: int, user_name: str | None,
            group_names: Iterable[str]) -> Role | None:
    """The highest role the peer holds: root (uid 0) is admin; otherwise a role whose list
    names the user, or one of its groups as ``@group``.  None: no role, no access."""
    if uid == 0:
        return Role.ADMIN
    principals = {f"@{group}" for group in group_names}
    if user_name is not None:
        principals.add(user_name)
    roles = config.access.roles
    for role, holders in ((Role.ADMIN, roles.admin), (Role.OPERATOR, roles.operator),
                          (Role.VIEWER, roles.viewer)):
        if principals.intersection(holders):
            return role
    return None


def allowed(role: Role | None, operation: str) -> bool:
    """May ``role`` do ``operation``?  No role may do nothing; unknown operations nobody."""
    needed = OPERATIONS.get(operation)
    return role is not None and needed is not None and role >= needed
