"""The topology file: format, checks and model.

``load_topology(path)`` reads a YAML topology file, checks it completely (every problem is
reported as ``FILE:LINE: KEY.PATH: message``) and returns a frozen ``Topology``.  The format
is specified once, in ``fields.py``; ``json_schema()`` publishes it for editors
(``topology.schema.json``).  In short::

    version: 1                      # optional
    name: LAB                       # ^[a-z][a-z0-9-]{0,15}$ (part of kernel object names)
    networks:                       # one VLAN each; mode isolated (default) | nat | bridged
      NET: {vlan: 1..4094, mode, subnet, gateway, uplink, tagged, dhcp, forward,
            mac_aging: 300, mac_limit: 1024, vni: 1..16777215 (default: derived),
            host: HOST (nat, with hosts), uplink: {HOST: IFNAME} (bridged, with hosts)}
    nodes:                          # kind netns | vm; vm-only: vcpus memory kernel cmdline
      NODE:                         #                           initrd disk restart
        kind: netns
        nics: [{name: eth0, network: NET, ip: 10.0.0.1/24 | dhcp, mac: ...},
               {name: eth1, trunk: [NET, ...], native: NET | null}]
        host: HOST                  # required when hosts are declared, refused otherwise
    hosts: {HOST: {address, description}}       # multi-host labs: VXLAN underlay addresses
    bus: {broker: mqtt[s]://HOST[:PORT], topic_root: vnet/v1}  # required with 2+ hosts
    expect: [{from: NODE, to: NODE | ADDRESS, ping | arp: BOOL | tcp: PORT (connects: BOOL),
              vlan: VID (arp from a trunk), within: SECONDS}]    # checked by vnet test

Reading is bounded (``yamlcompose.YamlLimits``: 1 MiB, 100,000 YAML nodes, 32 levels,
200,000 values after aliases and merges), and so are messages (``report.quote``).

A NIC without ``mac`` gets ``derive_mac(lab, node, nic)``: ``02`` then 5 bytes of
blake2b, stable across runs, hosts and Python versions.  ``topology_to_dict`` gives the model
back as a document of this same format, with every default spelled out.  ``placement``
answers what one host realises of a lab (``part_for_host``) and where each node MAC lives.
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
from vnet.topology.placement import (
    HostPart,
    NicPlace,
    has_network,
    mac_hosts,
    network_hosts,
    nic_places,
    part_for_host,
    uplink_on,
)
from vnet.topology.values import assign_vnis, derive_mac, derive_vni

__all__ = [
    "Bus",
    "Dhcp",
    "Disk",
    "Forward",
    "FrozenMap",
    "Host",
    "HostPart",
    "Kind",
    "Mode",
    "Network",
    "Nic",
    "NicPlace",
    "Node",
    "Proto",
    "Restart",
    "Topology",
    "assign_vnis",
    "derive_mac",
    "derive_vni",
    "has_network",
    "json_schema",
    "load_topology",
    "mac_hosts",
    "network_hosts",
    "nic_places",
    "parse_topology",
    "part_for_host",
    "topology_to_dict",
    "uplink_on",
]
