"""The one error hierarchy of vnet.

Every message is meant for the user: it says what is wrong and how to fix it.  Code that
catches ``VnetError`` at the edge (CLI, daemon API) prints ``str(err)`` and nothing else.
"""

from __future__ import annotations


class VnetError(Exception):
    """Base of every error vnet raises on purpose."""


class TopologyError(VnetError):
    """A topology file is malformed or inconsistent.

    ``problems`` holds one line per problem, each already prefixed with ``file:line: key:``
    so that a user (or an editor) can jump to it.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class HostError(VnetError):
    """The host cannot realise what was asked (missing kernel feature, name clash, ...)."""


class DaemonError(VnetError):
    """vnetd is unreachable or refused a request."""


class DatapathError(VnetError):
    """The datapath process is unreachable or refused a control request."""


class ProtocolError(VnetError, ValueError):
    """A control-channel message is malformed: not a JSON object, an unknown operation,
    a missing, unknown or mistyped field, another protocol version.  (A ``ValueError`` too,
    as it was before it joined this hierarchy.)"""
