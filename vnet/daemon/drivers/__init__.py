"""One driver per resource kind: how each is created, deleted, checked and described.

Adding a kind of resource is adding its dataclass (``vnet.daemon.resources``, with its place
in ``KIND_ORDER``) and its driver here; the reconciler and the status need no change.
"""

from __future__ import annotations

from pathlib import Path

from vnet.daemon.drivers.bridge import BridgeDriver
from vnet.daemon.drivers.dhcp import DhcpDriver
from vnet.daemon.drivers.dhcp_lease import DhcpLeaseDriver
from vnet.daemon.drivers.gateway import GatewayDriver
from vnet.daemon.drivers.nat import NatDriver
from vnet.daemon.drivers.netns_node import NetnsNodeDriver
from vnet.daemon.drivers.network import NetworkDriver
from vnet.daemon.drivers.overlay import OverlayDriver
from vnet.daemon.drivers.overlay_filter import OverlayFilterDriver
from vnet.daemon.drivers.port import PortDriver
from vnet.daemon.drivers.vm_node import VmNodeDriver
from vnet.daemon.reconciler import Drivers
from vnet.daemon.supervisor import DatapathSupervisor
from vnet.daemon.vms import VmSupervisor


def host_drivers(state_dir: Path, datapath: DatapathSupervisor, vms: VmSupervisor) -> Drivers:
    """The drivers of one vnetd: datapath kinds talk to its datapath, the others to the
    kernel of the namespace vnetd runs in."""
    return Drivers.of([
        BridgeDriver(datapath), NetworkDriver(), GatewayDriver(), NatDriver(state_dir),
        DhcpDriver(state_dir), NetnsNodeDriver(), VmNodeDriver(vms), PortDriver(datapath),
        DhcpLeaseDriver(), OverlayDriver(), OverlayFilterDriver()])
