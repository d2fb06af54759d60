"""Port and VLAN configuration of the switch (validated, immutable) and per-port counters."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

VID_MIN, VID_MAX = 1, 4094
# The switch's defaults for a VLAN, and so the topology's for a network (``vnet.topology``
# takes them from here): how long a learned MAC is kept, how many one port may learn.
DEFAULT_MAC_AGING: float = 300  # seconds (an int, so the JSON Schema says 300)
DEFAULT_MAC_LIMIT = 1024
PORT_NUMBER_MAX = 2**31 - 1  # the FDB keeps port numbers in a C int array

PortMode = Literal["access", "trunk"]


def _check_vid(vid: int, what: str) -> None:
    if isinstance(vid, bool) or not isinstance(vid, int) or not VID_MIN <= vid <= VID_MAX:
        raise ValueError(f"{what} must be a VLAN ID in {VID_MIN}..{VID_MAX}, not {vid!r}")


def vlan_members(mode: str, vlan: int | None, allowed: Iterable[int],
                 native: int | None) -> frozenset[int]:
    """The VLANs a port carries: an access port its ``vlan``, a trunk its ``allowed`` VLANs
    and its ``native`` one (the one rule, for the switch and for what vnetd reports)."""
    if mode == "access":
        return frozenset() if vlan is None else frozenset({vlan})
    return frozenset(allowed) | ({native} if native else set())


@dataclass(frozen=True)
class VlanOptions:
    """Switch options of one VLAN (a network): MAC aging time and per-port learning limit."""

    vid: int
    mac_aging: float = DEFAULT_MAC_AGING
    mac_limit: int = DEFAULT_MAC_LIMIT

    def __post_init__(self) -> None:
        _check_vid(self.vid, "a VLAN")
        if not self.mac_aging > 0:
            raise ValueError(f"mac_aging must be > 0 seconds, not {self.mac_aging!r}")
        if self.mac_limit < 1:
            raise ValueError(f"mac_limit must be >= 1, not {self.mac_limit!r}")


@dataclass(frozen=True)
class PortConfig:
    """An access port (untagged in ``vlan``) or a trunk (``allowed`` tagged, ``native`` not)."""

    number: int
    name: str
    mode: PortMode
    vlan: int | None = None
    allowed: frozenset[int] = frozenset()
    native: int | None = None
    members: frozenset[int] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.number, bool) or not isinstance(self.number, int) or not (
                0 <= self.number <= PORT_NUMBER_MAX):
            raise ValueError(f"port {self.name}: its number must be an integer in "
                             f"0..{PORT_NUMBER_MAX}, not {self.number!r}")
        if self.mode == "access":
            if self.vlan is None:
                raise ValueError(f"access port {self.name} needs a VLAN")
            _check_vid(self.vlan, f"the VLAN of access port {self.name}")
            if self.allowed or self.native is not None:
                raise ValueError(f"access port {self.name} cannot have allowed or native VLANs")
        elif self.mode == "trunk":
            if self.vlan is not None:
                raise ValueError(f"trunk port {self.name} takes allowed/native, not vlan")
            for vid in self.allowed:
                _check_vid(vid, f"an allowed VLAN of trunk {self.name}")
            if self.native is not None:
                _check_vid(self.native, f"the native VLAN of trunk {self.name}")
        else:
            raise ValueError(f"port mode must be access or trunk, not {self.mode!r}")
        members = vlan_members(self.mode, self.vlan, self.allowed, self.native)
        if not members:
            raise ValueError(f"trunk port {self.name} carries no VLAN")
        object.__setattr__(self, "members", members)

    def tags(self, vid: int) -> bool:
        """Does a frame of VLAN ``vid`` leave this port tagged?"""
        return self.mode == "trunk" and vid != self.native


class PortCounters:
    """Per-port counters; ``tx`` counts what the switch decided to send out of the port."""

    __slots__ = ("drops", "learn_limited", "mac_moves", "rx_bytes", "rx_frames", "tx_bytes",
                 "tx_frames")

    def __init__(self) -> None:
        self.rx_frames = self.rx_bytes = self.tx_frames = self.tx_bytes = 0
        self.learn_limited = self.mac_moves = 0
        self.drops: dict[str, int] = {}

    def drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        return {"rx_frames": self.rx_frames, "rx_bytes": self.rx_bytes,
                "tx_frames": self.tx_frames, "tx_bytes": self.tx_bytes,
                "drops": dict(self.drops), "learn_limited": self.learn_limited,
                "mac_moves": self.mac_moves}
