"""Host-side links that vnet creates: taking only free names, marking them as ours, and
deleting only what carries our mark (pyroute2, blocking: vnetd calls these in a thread).

Every host-side interface vnet creates carries an ``ifalias`` naming its owner
(``vnet:LAB:NODE:NIC``); deletion checks it, so a stranger's interface with a name like
ours is never touched.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vnet.errors import NotOurs
from vnet.host import netns

log = logging.getLogger("vnet.links")
ENODEV = 19
_per_thread = threading.local()


def host_iproute() -> IPRoute:
    """This thread's netlink socket in vnetd's own namespace, kept for the thread's life: a
    pyroute2 ``IPRoute`` costs a new event loop and a socket, and a wave's steps make
    several each.  Not to be closed by its caller.  Made with ``nlm_echo`` so a link's add
    answers with the new link (its ifindex, a veth's peer's).  A thread that is visiting
    another namespace when it first asks gets a ``RuntimeError``: the socket would live
    there for good."""
    ipr: IPRoute | None = getattr(_per_thread, "ipr", None)
    if ipr is None:
        if os.stat("/proc/thread-self/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino:
            raise RuntimeError("host_iproute() asked from a thread inside another namespace")
        ipr = _per_thread.ipr = IPRoute(nlm_echo=True)
    return ipr


def add_veth(ipr: IPRoute, ifname: str, peer: dict[str, object], **attrs: object
             ) -> tuple[int, int]:
    """Add a veth pair (``peer``: its other end's attributes, e.g. ``net_ns_fd``); the
    ifindex of ``ifname`` and of its peer (in the peer's namespace), from the add's echo,
    so neither needs a lookup.  ``ipr`` must echo (``host_iproute``)."""
    reply = ipr.link("add", ifname=ifname, kind="veth", peer=peer, **attrs)
    echoed = [m for m in reply if m.get("index")]
    # a kernel before 6.3 (or a socket without echo) answers with an ack alone: ask
    link = echoed[0] if echoed else ipr.link("get", ifname=ifname)[0]
    return link["index"], link.get_attr("IFLA_LINK")


def refuse_taken(ipr: IPRoute, ifnames: Iterable[str], owner: str) -> None:
    """Refuse to create over an interface that vnet's state does not record."""
    for ifname in ifnames:
        if ipr.link_lookup(ifname=ifname):
            raise NotOurs(f"interface {ifname} already exists and vnet's state does not "
                            f"record it; remove it or rename the lab or {owner}")


def all_present(ipr: IPRoute, ifnames: Iterable[str]) -> bool:
    return all(ipr.link_lookup(ifname=ifname) for ifname in ifnames)


def mark_port_end(ipr: IPRoute, index: int, ifname: str, alias: str) -> None:
    """What ``bring_up_port_end`` does but the up, for a stage that comes before it (a
    node's first, which runs a wave's nodes side by side): marked as ours, IPv6 off."""
    netns.write_sysctl(None, f"net.ipv6.conf.{ifname}.disable_ipv6", "1")
    ipr.link("set", index=index, ifalias=alias)


def bring_up_marked(ipr: IPRoute, ifname: str) -> None:
    """Up a port end that ``mark_port_end`` marked (by name: one request, no lookup)."""
    ipr.link("set", ifname=ifname, state="up")


def bring_up_port_end(ipr: IPRoute, ifname: str, alias: str) -> None:
    """Mark a host-side end as ours and bring it up without IPv6: a switch port must not
    speak (DAD probes and MLD reports would land on the node side of the veth).  Callers
    configure everything else first: a link goes up last."""
    netns.write_sysctl(None, f"net.ipv6.conf.{ifname}.disable_ipv6", "1")
    index = ipr.link_lookup(ifname=ifname)[0]
    ipr.link("set", index=index, ifalias=alias, state="up")


def delete_owned_link(ipr: IPRoute, ifname: str, alias: str) -> None:
    """Delete ``ifname`` if it is there and marked ``alias``; absence is fine."""
    indexes = ipr.link_lookup(ifname=ifname)
    if not indexes:
        return
    link = ipr.get_links(indexes[0])[0]
    if link.get("IFLA_IFALIAS") != alias:
        log.warning("not deleting %s: it is not marked %r, so vnet did not create it",
                    ifname, alias)
        return
    try:
        ipr.link("del", index=indexes[0])
    except NetlinkError as err:
        if err.code != ENODEV:  # it went with its namespace peer meanwhile
            raise
