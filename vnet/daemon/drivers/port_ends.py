"""The together stage that namespace and VM nodes share (``reconciler.Staged``): a wave's
host-side port ends (veth host ends, TAPs) closed to the host's stack in ONE nft
transaction, then brought up and marked as ours."""

from __future__ import annotations

from collections.abc import Sequence

from vnet.host import links, nft


def open_port_ends(groups: Sequence[Sequence[str]]) -> list[Exception | None]:
    """Each group is one node's host ends, marked as ours in the node's first stage
    (``links.mark_port_end``): their port tables in one nft transaction (a group nft refuses
    fails alone), then each made group's ends up; each group's error (None: its ends are up,
    closed to the host's stack)."""
    outcomes: list[Exception | None] = list(nft.keep_host_stacks_off(groups))
    ipr = links.host_iproute()
    for i, group in enumerate(groups):
        if outcomes[i] is not None:
            continue
        try:
            for ifname in group:
                links.bring_up_marked(ipr, ifname)
        except Exception as err:
            outcomes[i] = err
    return outcomes
