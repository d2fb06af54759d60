"""The pure switching core: ports, VLANs, the forwarding database and the decision."""

from vnet.switch.bridge import Forward, Switch
from vnet.switch.fdb import Fdb, FdbEntry, LearnResult
from vnet.switch.ports import PortConfig, PortCounters, VlanOptions

__all__ = ["Fdb", "FdbEntry", "Forward", "LearnResult", "PortConfig", "PortCounters", "Switch",
           "VlanOptions"]
