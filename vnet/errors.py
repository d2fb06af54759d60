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


class NotOurs(HostError):
    """What vnet is about to create exists already and is not vnet's.  Raised before the
    resource's driver has created anything, so a rollback must not delete it: that would
    delete a stranger's namespace or interface."""


class NetnsError(HostError):
    """A network namespace cannot be entered: it is gone, or not visible from here."""


class DaemonError(VnetError):
    """vnetd is unreachable or refused a request."""


class DatapathError(VnetError):
    """The datapath process is unreachable or refused a control request."""


class DatapathGone(DatapathError):
    """The datapath process went away (nothing listens, the connection closed): what was
    asked of it is not done, and whichever datapath runs next is programmed from the lab
    records, so a bridge or port that a dying datapath did not take is not a lab's fault."""


def describe_os_error(err: OSError) -> str:
    """An unexpected ``OSError`` in words, without its ``[Errno N]`` prefix: what failed, on
    which file, and a hint where one is obvious (most of vnet needs root)."""
    what = err.strerror or str(err) or type(err).__name__
    if err.filename is not None:
        what = f"{err.filename}: {what}"
    if isinstance(err, PermissionError):
        what += " (vnet needs root: run it as root or with sudo)"
    return what


class ProtocolError(VnetError, ValueError):
    """A control-channel message is malformed: not a JSON object, an unknown operation,
    a missing, unknown or mistyped field, another protocol version.  (A ``ValueError`` too,
    as it was before it joined this hierarchy.)"""
