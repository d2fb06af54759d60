"""The together stage that namespace and VM nodes share (``reconciler.Staged``): a wave's
host-side port ends (veth host ends, TAPs) closed to the host's stack in ONE nft
transaction, then brought up and marked as ours."""

from __future__ import annotations

from collections.abc import Sequence

from vnet.host import links, nft


def open_port_ends(groups: Sequence[Sequence[tuple[str, str]]], marked: bool = False
                   ) -> list[Exception | None]:
    """Each group is one node's ends as (ifname, alias): their port tables in one nft
    transaction (a group nft refuses fails alone), then each made group's ends up (and
    marked as ours, unless ``marked`` already: ``links.mark_port_end``); each group's error
    (None: its ends are up, closed to the host's stack)."""
    outcomes: list[Exception | None] = list(
        nft.keep_host_stacks_off([[ifname for ifname, _ in group] for group in groups]))
    ipr = links.host_iproute()
    for i, group in enumerate(groups):
        if outcomes[i] is not None:
            continue
        try:
            for ifname, alias in group:
                if marked:
                    links.bring_up_marked(ipr, ifname)
                else:
                    links.bring_up_port_end(ipr, ifname, alias)
        except Exception as err:
            outcomes[i] = err
    return outcomes
