"""Host-side links that vnet creates: taking only free names, marking them as ours, and
deleting only what carries our mark (pyroute2, blocking: vnetd calls these in a thread).

Every host-side interface vnet creates carries an ``ifalias`` naming its owner
(``vnet:LAB:NODE:NIC``); deletion checks it, so a stranger's interface with a name like
ours is never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vnet.errors import NotOurs
from vnet.host import netns

log = logging.getLogger("vnet.links")
ENODEV = 19


def refuse_taken(ipr: IPRoute, ifnames: Iterable[str], owner: str) -> None:
    """Refuse to create over an interface that vnet's state does not record."""
    for ifname in ifnames:
        if ipr.link_lookup(ifname=ifname):
            raise NotOurs(f"interface {ifname} already exists and vnet's state does not "
                            f"record it; remove it or rename the lab or {owner}")


def all_present(ipr: IPRoute, ifnames: Iterable[str]) -> bool:
    return all(ipr.link_lookup(ifname=ifname) for ifname in ifnames)


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
