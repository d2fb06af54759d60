"""The topology file format (version 1) as one table of field specs.

The loader checks structure against ``TOPOLOGY`` and ``json_schema()`` derives the published
JSON Schema (``topology.schema.json``, for editors) from the same table, so they agree by
construction.  Regenerate the checked-in file after changing this table::

    python -m vnet.topology.schema > vnet/topology/topology.schema.json
"""

from __future__ import annotations

from vnet.switch.ports import DEFAULT_MAC_AGING, DEFAULT_MAC_LIMIT
from vnet.topology import model, values
from vnet.topology.spec import (
    JSON,
    AnyOf,
    Bool,
    Enum,
    Field,
    Int,
    ListOf,
    MapOf,
    Null,
    Number,
    Obj,
    OneOfKeys,
    Str,
)

LAB_NAME = r"^[a-z][a-z0-9-]{0,15}$"
LAB_NAME_WHY = ("a lower-case letter, then up to 15 lower-case letters, digits or '-': "
                "the lab name is part of kernel object names")
NAME = r"^[a-z][a-z0-9_-]{0,30}$"
NAME_WHY = "a lower-case letter, then up to 30 lower-case letters, digits, '_' or '-'"
HOST_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
HOST_NAME_WHY = "a letter or digit, then up to 62 letters, digits, '_', '.' or '-'"
IFNAME = r"^(?!\.\.?$)[A-Za-z0-9_.-]{1,15}$"
IFNAME_WHY = "a Linux interface name: 1 to 15 letters, digits, '_', '.' or '-'"
MAC = r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$"
MEMORY = r"^[0-9]+[KMGkmg]?$"
KERNEL_BUILTIN = r"^builtin:[a-z0-9-]+$"
FORWARD_TO = r"^[a-z][a-z0-9_-]{0,30}:[0-9]{1,5}$"
BROKER = r"^mqtts?://\S+$"
TOPIC_ROOT = r"^[^#+/\s]+(/[^#+/\s]+)*$"

MIN_MEMORY = 16 * 2**20
NAT, BRIDGED, VM = ("nat",), ("bridged",), ("vm",)
UPLINK_MODES = ("nat", "bridged")

name_ref = Str(NAME, NAME_WHY)
host_ref = Str(HOST_NAME, HOST_NAME_WHY)
ifname = Str(IFNAME, IFNAME_WHY)
ip_text = Str()
port = Int(1, 65535)

DHCP = Obj(noun="dhcp service", description="The DHCP service of a NAT network.", fields={
    "range": Field(ListOf(ip_text, min_items=2, max_items=2),
                   "[first, last]: the addresses handed out dynamically, inside the subnet.",
                   required=True),
    "leases": Field(MapOf(name_ref, ip_text, noun="node name"),
                    "Static leases: node name -> IPv4 address inside the subnet."),
})

FORWARD = Obj(noun="forward", description="A host port forwarded to a node's port.", fields={
    "proto": Field(Enum(("tcp", "udp")), "tcp or udp.", required=True),
    "port": Field(port, "The port on the host.", required=True),
    "to": Field(Str(FORWARD_TO, "NODE:PORT"), "NODE:PORT inside the network.", required=True),
})

NETWORK = Obj(noun="network", description="A network: one VLAN on the lab's switch.", fields={
    "vlan": Field(Int(1, 4094), "802.1Q VLAN ID, unique in the lab.", required=True),
    "vni": Field(Int(1, values.VNI_MAX), "The VXLAN network identifier that carries this "
                 "network between hosts, unique in the lab; default: derived from the lab and "
                 f"network names ({values.DERIVED_VNI_MIN} and up)."),
    "mode": Field(Enum(("isolated", "nat", "bridged")),
                  "isolated: only the lab; nat: routed out through a NAT gateway; "
                  "bridged: switched onto a host interface.", default="isolated"),
    "subnet": Field(ip_text, "IPv4 subnet (e.g. 192.168.20.0/24); required for nat. Node "
                    "addresses in this network must lie inside it.", required_with=("mode", NAT)),
    "gateway": Field(ip_text, "The NAT gateway's address; default: the subnet's first host.",
                     only=("mode", NAT)),
    "uplink": Field(AnyOf((ifname, MapOf(host_ref, ifname, noun="host name"))),
                    "The host interface that leads out; required for bridged, optional for "
                    "nat (default: the host's default route).  In a lab with hosts a bridged "
                    "network names it per host ({h1: eth2, h2: eth3}); a NAT network's is on "
                    "its gateway's host.",
                    only=("mode", UPLINK_MODES), required_with=("mode", BRIDGED)),
    "host": Field(host_ref, "nat, in a lab with hosts (and only there): the host that holds "
                  "the gateway, its DHCP server and NAT rules.", only=("mode", NAT)),
    "tagged": Field(Bool(), "bridged only: carry the VLAN tagged on the uplink.", default=False,
                    only=("mode", BRIDGED)),
    "dhcp": Field(DHCP, "nat only: serve DHCP in the subnet.", only=("mode", NAT)),
    "forward": Field(ListOf(FORWARD), "nat only: host ports forwarded to nodes.",
                     only=("mode", NAT)),
    "reach": Field(ListOf(name_ref, unique=True),
                   "nat only: other NAT networks of the lab that this network's nodes may open "
                   "connections to (routed, not masqueraded; replies come back).  NAT "
                   "networks cannot reach each other otherwise.", only=("mode", NAT)),
    "mac_aging": Field(Number(above=0), "Seconds a learned MAC stays in the switch's table.",
                       default=DEFAULT_MAC_AGING),
    "mac_limit": Field(Int(1), "Most MACs the switch learns per port in this network.",
                       default=DEFAULT_MAC_LIMIT),
})

NIC = Obj(noun="NIC", description="A NIC: an access port (network) or a trunk (trunk).",
          exactly_one=(OneOfKeys(("network", "trunk"), "a NIC needs exactly one of network "
                                 "(an access port) or trunk (a list of tagged networks)"),),
          fields={
    "name": Field(Str(IFNAME, IFNAME_WHY), "The interface name inside the node (e.g. eth0).",
                  required=True),
    "network": Field(name_ref, "Access port: untagged in this network's VLAN."),
    "trunk": Field(ListOf(name_ref, min_items=1, unique=True),
                   "Trunk port: tagged with each listed network's VLAN."),
    "native": Field(AnyOf((name_ref, Null())),
                    "Trunk only: the network whose frames go untagged (null: none).",
                    requires="trunk"),
    "ip": Field(ip_text, "An address with prefix (10.0.0.1/24, fd00::1/64), or 'dhcp' "
                "(access ports on a nat network)."),
    "mac": Field(Str(MAC, "six hex octets"),
                 "A unicast MAC; default: 02 + 5 bytes of blake2b('LAB/NODE/NIC')."),
})

DISK = Obj(noun="disk", description="A virtio-blk disk image.", fields={
    "path": Field(Str(), "The image file (relative to the topology file).", required=True),
    "readonly": Field(Bool(), "Attach read-only.", default=False),
})

NODE = Obj(noun="node", description="A namespace container (netns) or a KVM guest (vm).",
           fields={
    "kind": Field(Enum(("netns", "vm")), "netns: a network-namespace container; vm: a KVM "
                  "guest.", required=True),
    "nics": Field(ListOf(NIC), "The node's NICs."),
    "host": Field(host_ref, "The host (under hosts:) that runs the node; required in a lab "
                  "with hosts, refused in one without."),
    "vcpus": Field(Int(1, 64), "vm only: virtual CPUs.", default=1, only=("kind", VM)),
    "memory": Field(AnyOf((Int(MIN_MEMORY), Str(MEMORY, "bytes, or a number with K, M or G"))),
                    "vm only: guest memory, bytes or with K/M/G suffix; at least 16M.",
                    default="64M", only=("kind", VM)),
    "kernel": Field(Str(), "vm only: builtin:NAME or a kernel image path (relative to the "
                    "topology file).", default=model.DEFAULT_KERNEL, only=("kind", VM)),
    "cmdline": Field(Str(), "vm only: the kernel command line.", only=("kind", VM)),
    "initrd": Field(Str(), "vm only: an initrd path (relative to the topology file).",
                    only=("kind", VM)),
    "disk": Field(AnyOf((Str(), DISK)), "vm only: a disk image path or {path, readonly}.",
                  only=("kind", VM)),
    "restart": Field(Enum(("no", "on-failure", "always")),
                     "vm only: restart the guest when it stops.", default="on-failure",
                     only=("kind", VM)),
})

HOST = Obj(noun="host", description="A host that runs vnetd and its part of the lab.",
           fields={
    "address": Field(ip_text, "The underlay IPv4 or IPv6 address the host's datapath sends "
                     "and receives VXLAN on; unique.", required=True),
    "description": Field(Str(), "Free text."),
})

SECRETS = ("username", "user", "password", "pass", "token", "client_id", "tls", "ca", "cafile",
           "ca_file", "ca_certs", "cert", "certfile", "cert_file", "key", "keyfile", "key_file")
SECRETS_WHY = ("does not go in the topology, which every host shares: credentials and TLS "
               "files belong to each host's vnetd configuration (the topology names only the "
               "broker, mqtts:// for TLS)")

BUS = Obj(noun="bus", description="The MQTT bus between the hosts of a lab.",
          refused={key: SECRETS_WHY for key in SECRETS}, fields={
    "broker": Field(Str(BROKER, "mqtt://HOST:PORT or mqtts://HOST:PORT"),
                    "The broker: mqtt://HOST[:PORT] (default port 1883) or mqtts://HOST[:PORT] "
                    "(TLS, 8883); required with two or more hosts.", required=True),
    "topic_root": Field(Str(TOPIC_ROOT, "topic levels separated by '/', no wildcards"),
                        "Prefix of every topic vnet uses.", default=model.DEFAULT_TOPIC_ROOT),
})

EXPECT = Obj(noun="expectation", description="What must (or must not) reach what, checked "
             "against the live lab by `vnet test`.",
             exactly_one=(OneOfKeys(("ping", "tcp", "arp"), "an expectation needs exactly one "
                                    "of ping, tcp or arp"),),
             fields={
    "from": Field(name_ref, "The namespace node the check runs in.", required=True),
    "to": Field(Str(), "A node of the lab or an IP address.", required=True),
    "ping": Field(Bool(), "true: an ICMP echo reply comes back; false: none does."),
    "tcp": Field(port, "A TCP port that accepts a connection (see connects)."),
    "connects": Field(Bool(), "tcp only: false when the connection must not be made.",
                      default=True, requires="tcp"),
    "arp": Field(Bool(), "true: the target answers an ARP request; false: it does not."),
    "vlan": Field(Int(1, 4094), "arp only: send the request tagged with this VLAN ID from the "
                  "node's trunk NIC.", requires="arp"),
    "within": Field(Number(above=0), "Seconds to wait (at most 60): a positive check passes at "
                    "the first reply within them, a negative one when none comes.",
                    default=model.DEFAULT_WINDOW),
})

TOPOLOGY = Obj(noun="topology", description="A vnet topology file (version 1).", fields={
    "version": Field(Enum((1,)), "The format version; only 1 exists.", default=1),
    "name": Field(Str(LAB_NAME, LAB_NAME_WHY), "The lab's name.", required=True),
    "networks": Field(MapOf(name_ref, NETWORK, noun="network name"),
                      "The lab's networks by name.", required=True),
    "nodes": Field(MapOf(name_ref, NODE, noun="node name"), "The lab's nodes by name.",
                   required=True),
    "hosts": Field(MapOf(Str(HOST_NAME, HOST_NAME_WHY), HOST, noun="host name"),
                   "The hosts of a multi-host lab; then every node names its host."),
    "bus": Field(BUS, "The MQTT bus of a multi-host lab."),
    "expect": Field(ListOf(EXPECT), "Reachability expectations that `vnet test` checks."),
})


def json_schema() -> JSON:
    """The JSON Schema (draft 2020-12) of the topology file format."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "vnet topology", **TOPOLOGY.schema()}

