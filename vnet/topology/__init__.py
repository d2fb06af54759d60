"""The topology file: format, checks and model.

``load_topology(path)`` reads a YAML topology file, checks it completely (every problem is
reported with ``FILE:LINE: KEY.PATH:``) and returns a frozen ``Topology``.  The format is
specified once, in ``fields.py``; ``json_schema()`` publishes it for editors.
"""

from vnet.topology.export import topology_to_dict
from vnet.topology.fields import json_schema
from vnet.topology.loader import load_topology, parse_topology
from vnet.topology.model import (
    Bus,
    Dhcp,
    Disk,
    Forward,
    FrozenMap,
    Host,
    Kind,
    Mode,
    Network,
    Nic,
    Node,
    Proto,
    Restart,
    Topology,
)
from vnet.topology.values import derive_mac

__all__ = [
    "Bus",
    "Dhcp",
    "Disk",
    "Forward",
    "FrozenMap",
    "Host",
    "Kind",
    "Mode",
    "Network",
    "Nic",
    "Node",
    "Proto",
    "Restart",
    "Topology",
    "derive_mac",
    "json_schema",
    "load_topology",
    "parse_topology",
    "topology_to_dict",
]
