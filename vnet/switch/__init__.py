"""The pure switching core: ports, VLANs, the forwarding database and the decision."""

from vnet.switch.bridge import Forward, Switch
from vnet.switch.fdb import Fdb, FdbEntry, LearnResult
from vnet.switch.ports import (
    DEFAULT_MAC_AGING,
    DEFAULT_MAC_LIMIT,
    PortConfig,
    PortCounters,
    PortMode,
    VlanOptions,
)

__all__ = ["DEFAULT_MAC_AGING", "DEFAULT_MAC_LIMIT", "Fdb", "FdbEntry", "Forward", "LearnResult",
           "PortConfig", "PortCounters", "PortMode", "Switch", "VlanOptions"]
