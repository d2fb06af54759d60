"""Every problem the loader knows, with its exact ``FILE:LINE: KEY.PATH: message``.

Each case lists *all* the problems its document has, so the tests also prove that one
mistake yields one message (no follow-on noise) and that several mistakes are all reported.
"""

from __future__ import annotations

from textwrap import dedent

import pytest

from vnet.errors import TopologyError
from vnet.topology import parse_topology


def problems(text: str) -> list[str]:
    with pytest.raises(TopologyError) as info:
        parse_topology(dedent(text).lstrip("\n"), source="t.yaml")
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


CASES: dict[str, tuple[str, list[str]]] = {
    "undefined network": ("""
        name: x
        networks:
          office: {vlan: 10}
          lab: {vlan: 20}
        nodes:
          c1:
            kind: netns
            nics: [{name: eth0, network: offce, ip: 10.10.0.1/24}]
        """, ["t.yaml:8: nodes.c1.nics[0].network: network 'offce' is not defined "
              "(defined: lab, office); did you mean 'office'?"]),
    "undefined trunk and native networks": ("""
        name: x
        networks: {}
        nodes:
          r1: {kind: netns, nics: [{name: eth0, trunk: [a], native: b}]}
        """, ["t.yaml:4: nodes.r1.nics[0].trunk[0]: network 'a' is not defined (defined: none)",
              "t.yaml:4: nodes.r1.nics[0].native: network 'b' is not defined (defined: none)"]),
    "unknown key with suggestion": ("""
        name: x
        networks:
          a: {vlna: 10}
        nodes: {}
        """, ["t.yaml:3: networks.a.vlna: unknown key 'vlna'; did you mean 'vlan'? (allowed: "
              "dhcp, forward, gateway, host, mac_aging, mac_limit, mode, reach, subnet, tagged, "
              "uplink, vlan, vni)",
              "t.yaml:3: networks.a.vlan: required key is missing"]),
    "unknown top-level key without suggestion": ("""
        name: x
        networks: {}
        nodes: {}
        zzz: 1
        """, ["t.yaml:4: zzz: unknown key 'zzz' (allowed: bus, expect, hosts, name, networks, "
              "nodes, version)"]),
    "missing top-level keys at the mapping's line": ("""
        # comment
        name: x
        """, ["t.yaml:2: networks: required key is missing",
              "t.yaml:2: nodes: required key is missing"]),
    "bad lab name mentions kernel names": ("""
        name: My_Lab
        networks: {}
        nodes: {}
        """, ["t.yaml:1: name: 'My_Lab' must match ^[a-z][a-z0-9-]{0,15}$ (a lower-case "
              "letter, then up to 15 lower-case letters, digits or '-': the lab name is part "
              "of kernel object names)"]),
    "lab name too long": ("""
        name: abcdefghijklmnopq
        networks: {}
        nodes: {}
        """, ["t.yaml:1: name: 'abcdefghijklmnopq' must match ^[a-z][a-z0-9-]{0,15}$ (a "
              "lower-case letter, then up to 15 lower-case letters, digits or '-': the lab "
              "name is part of kernel object names)"]),
    "bad node and network names": ("""
        name: x
        networks:
          Office: {vlan: 1}
        nodes:
          9c: {kind: netns}
        """, ["t.yaml:3: networks.Office: network name 'Office' must match "
              "^[a-z][a-z0-9_-]{0,30}$ (a lower-case letter, then up to 30 lower-case letters, "
              "digits, '_' or '-')",
              "t.yaml:5: nodes.9c: node name '9c' must match ^[a-z][a-z0-9_-]{0,30}$ (a "
              "lower-case letter, then up to 30 lower-case letters, digits, '_' or '-')"]),
    "version": ("""
        version: 2
        name: x
        networks: {}
        nodes: {}
        """, ["t.yaml:1: version: 2 is not supported: the only value is 1"]),
    "vlan range, bool and string": ("""
        name: x
        networks:
          a: {vlan: 0}
          b: {vlan: 4095}
          c: {vlan: true}
          d: {vlan: "10"}
        nodes: {}
        """, ["t.yaml:3: networks.a.vlan: 0 is out of range 1..4094",
              "t.yaml:4: networks.b.vlan: 4095 is out of range 1..4094",
              "t.yaml:5: networks.c.vlan: expected an integer, got a boolean (True)",
              "t.yaml:6: networks.d.vlan: expected an integer, got a string ('10')"]),
    "duplicate vlan": ("""
        name: x
        networks:
          a: {vlan: 10}
          b:
            vlan: 10
        nodes: {}
        """, ["t.yaml:5: networks.b.vlan: VLAN 10 is already used by network 'a': each "
              "network needs its own VLAN"]),
    "wrong types": ("""
        name: x
        networks: []
        nodes:
          n: {kind: netns, nics: {name: eth0}}
          m: [1]
        """, ["t.yaml:2: networks: expected a mapping, got a list",
              "t.yaml:4: nodes.n.nics: expected a list, got a mapping",
              "t.yaml:5: nodes.m: expected a mapping, got a list"]),
    "empty values suggest {} and []": ("""
        name: x
        networks:
        nodes:
          n: {kind: netns, nics: }
        """, ["t.yaml:2: networks: expected a mapping, got nothing (null): write {} for none",
              "t.yaml:4: nodes.n.nics: expected a list, got nothing (null): write [] for none"]),
    "mode and mac options": ("""
        name: x
        networks:
          a: {vlan: 1, mode: natt, mac_aging: 0, mac_limit: 0}
          b: {vlan: 2, mac_aging: .inf, mac_limit: 1.5}
        nodes: {}
        """, ["t.yaml:3: networks.a.mode: 'natt' is not one of isolated | nat | bridged; "
              "did you mean 'nat'?",
              "t.yaml:3: networks.a.mac_aging: 0 is too small: it must be greater than 0",
              "t.yaml:3: networks.a.mac_limit: 0 is too small: the minimum is 1",
              "t.yaml:4: networks.b.mac_aging: inf is not a finite number",
              "t.yaml:4: networks.b.mac_limit: expected an integer, got a number (1.5)"]),
    "duplicate node name": ("""
        name: x
        networks: {}
        nodes:
          n1: {kind: netns}
          n1: {kind: vm}
        """, ["t.yaml:5: nodes.n1: duplicate key 'n1' (first at line 4): YAML would silently "
              "keep only the last one; remove one"]),
    "duplicate nic name": ("""
        name: x
        networks: {a: {vlan: 1}}
        nodes:
          n1:
            kind: netns
            nics:
              - {name: eth0, network: a}
              - {name: eth0, network: a}
        """, ["t.yaml:8: nodes.n1.nics[1].name: NIC name 'eth0' is already used by nics[0] "
              "of this node"]),
    "nic needs one of network or trunk": ("""
        name: x
        networks: {a: {vlan: 1}}
        nodes:
          n1:
            kind: netns
            nics:
              - name: eth0
              - name: eth1
                network: a
                trunk: [a]
        """, ["t.yaml:7: nodes.n1.nics[0].network: a NIC needs exactly one of network (an "
              "access port) or trunk (a list of tagged networks)",
              "t.yaml:10: nodes.n1.nics[1].trunk: trunk and network exclude each other: a NIC "
              "needs exactly one of network (an access port) or trunk (a list of tagged "
              "networks)"]),
    "trunk empty, duplicated, native without trunk": ("""
        name: x
        networks: {a: {vlan: 1}}
        nodes:
          n1:
            kind: netns
            nics:
              - {name: eth0, trunk: []}
              - {name: eth1, trunk: [a, a]}
              - {name: eth2, network: a, native: a}
        """, ["t.yaml:7: nodes.n1.nics[0].trunk: needs at least 1 item, got 0",
              "t.yaml:8: nodes.n1.nics[1].trunk[1]: 'a' is listed twice (first at [0])",
              "t.yaml:9: nodes.n1.nics[2].native: only allowed together with trunk"]),
    "nic names": ("""
        name: x
        networks: {a: {vlan: 1}}
        nodes:
          n1:
            kind: netns
            nics:
              - {name: "..", network: a}
              - {name: averyveryverylongname, network: a}
              - {name: "eth 0", network: a}
        """, [f"t.yaml:{line}: nodes.n1.nics[{i}].name: {name!r} must match "
              r"^(?!\.\.?$)[A-Za-z0-9_.-]{1,15}$ (a Linux interface name: 1 to 15 letters, "
              "digits, '_', '.' or '-')"
              for i, (line, name) in enumerate([(7, ".."), (8, "averyveryverylongname"),
                                                (9, "eth 0")])]),
    "bad addresses": ("""
        name: x
        networks: {a: {vlan: 1}}
        nodes:
          n1:
            kind: netns
            nics:
              - {name: e0, network: a, ip: 10.0.0.300/24}
              - {name: e1, network: a, ip: 10.0.0.1}
              - {name: e2, network: a, ip: 10.0.0.1/33}
              - {name: e3, network: a, ip: 42}
        """, ["t.yaml:7: nodes.n1.nics[0].ip: '10.0.0.300/24' is not an IP address with "
              "prefix length (e.g. 10.0.0.1/24 or fd00::1/64)",
              "t.yaml:8: nodes.n1.nics[1].ip: '10.0.0.1' has no prefix length: write it as "
              "ADDRESS/PREFIX, e.g. 10.0.0.1/24",
              "t.yaml:9: nodes.n1.nics[2].ip: '10.0.0.1/33' is not an IP address with "
              "prefix length (e.g. 10.0.0.1/24 or fd00::1/64)",
              't.yaml:10: nodes.n1.nics[3].ip: expected a string, got an integer (42): quote '
              'it ("42")']),
    "same ip twice in one network": ("""
        name: x
        networks: {a: {vlan: 1}, b: {vlan: 2}}
        nodes:
          n1: {kind: netns, nics: [{name: e0, network: a, ip: 10.0.0.1/24}]}
          n2: {kind: netns, nics: [{name: e0, network: b, ip: 10.0.0.1/24}]}
          n3: {kind: netns, nics: [{name: e0, network: a, ip: 10.0.0.1/16}]}
          n4: {kind: netns, nics: [{name: e0, trunk: [b], native: a, ip: 10.0.0.1/24}]}
        """, ["t.yaml:6: nodes.n3.nics[0].ip: 10.0.0.1 is already used in network 'a' by "
              "nodes.n1.nics[0]",
              "t.yaml:7: nodes.n4.nics[0].ip: 10.0.0.1 is already used in network 'a' by "
              "nodes.n1.nics[0]"]),
    "macs": ("""
        name: x
        networks: {a: {vlan: 1}}
        nodes:
          n1:
            kind: netns
            nics:
              - {name: e0, network: a, mac: "01:00:5e:00:00:01"}
              - {name: e1, network: a, mac: "00:00:00:00:00:00"}
              - {name: e2, network: a, mac: "ff:ff:ff:ff:ff:ff"}
              - {name: e3, network: a, mac: "52:54:00:00:00"}
              - {name: e4, network: a, mac: 52:54:00:12:34:56}
        """, ["t.yaml:7: nodes.n1.nics[0].mac: '01:00:5e:00:00:01' is a multicast MAC (the "
              "first octet is odd): a NIC needs a unicast one, e.g. 02:...",
              "t.yaml:8: nodes.n1.nics[1].mac: '00:00:00:00:00:00' is the all-zero MAC, which "
              "no NIC may use",
              "t.yaml:9: nodes.n1.nics[2].mac: 'ff:ff:ff:ff:ff:ff' is a multicast MAC (the "
              "first octet is odd): a NIC needs a unicast one, e.g. 02:...",
              "t.yaml:10: nodes.n1.nics[3].mac: '52:54:00:00:00' must match "
              "^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$ (six hex octets)",
              "t.yaml:11: nodes.n1.nics[4].mac: expected a string, got an integer "
              '(41135085296): quote it ("52:54:00:12:34:56")']),
    "duplicate macs, explicit and derived": ("""
        name: x
        networks: {a: {vlan: 1}}
        nodes:
          n1: {kind: netns, nics: [{name: e0, network: a, mac: "52:54:00:00:00:01"}]}
          n2: {kind: netns, nics: [{name: e0, network: a, mac: "52-54-00-00-00-01"}]}
          n3: {kind: netns, nics: [{name: e0, network: a, mac: "02:19:53:17:92:a3"}]}
          n4: {kind: netns, nics: [{name: e0, network: a}]}
        """, ["t.yaml:5: nodes.n2.nics[0].mac: MAC 52:54:00:00:00:01 is already used by "
              "nodes.n1.nics[0]",
              "t.yaml:7: nodes.n4.nics[0].mac: MAC 02:19:53:17:92:a3 (derived) is already used "
              "by nodes.n3.nics[0]"]),
    "vm-only keys on a netns node": ("""
        name: x
        networks: {}
        nodes:
          n1:
            kind: netns
            vcpus: 2
            memory: 1G
            kernel: builtin:tiny
            cmdline: quiet
            initrd: initrd.img
            disk: disk.img
            restart: always
        """, [f"t.yaml:{line}: nodes.n1.{key}: only allowed with kind: vm (this node has "
              "kind: netns)"
              for line, key in enumerate(["vcpus", "memory", "kernel", "cmdline", "initrd",
                                          "disk", "restart"], start=6)]),
    "vm values": ("""
        name: x
        networks: {}
        nodes:
          vm1:
            kind: vm
            vcpus: 65
            memory: 8M
            kernel: builtin:Tiny
            restart: sometimes
            disk: {path: d.img, readonly: maybe}
          vm2: {kind: vm, memory: 1000, disk: {readonly: true}}
          vm3: {kind: vm, memory: 64 MB, kernel: ""}
          vm4: {kind: container}
        """, ["t.yaml:6: nodes.vm1.vcpus: 65 is out of range 1..64",
              "t.yaml:7: nodes.vm1.memory: 8M is too little memory: a guest needs at least 16M",
              "t.yaml:8: nodes.vm1.kernel: 'builtin:Tiny' must match ^builtin:[a-z0-9-]+$",
              "t.yaml:9: nodes.vm1.restart: 'sometimes' is not one of no | on-failure | always",
              "t.yaml:10: nodes.vm1.disk.readonly: expected true or false, got a string "
              "('maybe')",
              "t.yaml:11: nodes.vm2.memory: 1000 is too small: the minimum is 16777216",
              "t.yaml:11: nodes.vm2.disk.path: required key is missing",
              "t.yaml:12: nodes.vm3.memory: '64 MB' must match ^[0-9]+[KMGkmg]?$ (bytes, or a "
              "number with K, M or G)",
              "t.yaml:12: nodes.vm3.kernel: the path is empty",
              "t.yaml:13: nodes.vm4.kind: 'container' is not one of netns | vm"]),
    "undefined host": ("""
        name: x
        networks: {}
        nodes:
          n1: {kind: netns, host: hostb}
        hosts:
          hostA: {address: 10.0.0.300}
        bus: {topic_root: "vnet/#"}
        """, ["t.yaml:4: nodes.n1.host: host 'hostb' is not defined (defined: hostA); did you "
              "mean 'hostA'?",
              "t.yaml:6: hosts.hostA.address: '10.0.0.300' is not an IP address",
              r"t.yaml:7: bus.topic_root: 'vnet/#' must match ^[^#+/\s]+(/[^#+/\s]+)*$ (topic "
              "levels separated by '/', no wildcards)",
              "t.yaml:7: bus.broker: required key is missing"]),
    "bus broker url": ("""
        name: x
        networks: {}
        nodes: {}
        bus: {broker: "127.0.0.1:1883"}
        """, [r"t.yaml:4: bus.broker: '127.0.0.1:1883' must match ^mqtts?://\S+$ "
              "(mqtt://HOST:PORT or mqtts://HOST:PORT)"]),
}


@pytest.mark.parametrize("text,expected", CASES.values(), ids=CASES.keys())
def test_problem_is_reported_at_its_line_and_path(text: str, expected: list[str]) -> None:
    assert problems(text) == expected


NAT_CASES: dict[str, tuple[str, list[str]]] = {
    "nat without subnet": ("""
        name: x
        networks:
          lab: {vlan: 20, mode: nat}
        nodes: {}
        """, ["t.yaml:3: networks.lab.subnet: required with mode: nat"]),
    "subnet with host bits, or not a subnet": ("""
        name: x
        networks:
          lab: {vlan: 20, mode: nat, subnet: 192.168.20.5/24}
          wan: {vlan: 30, subnet: 192.168.30.0}
          v6: {vlan: 40, subnet: "fd00::/64"}
        nodes: {}
        """, ["t.yaml:3: networks.lab.subnet: '192.168.20.5/24' has host bits set: did you "
              "mean 192.168.20.0/24?",
              "t.yaml:4: networks.wan.subnet: '192.168.30.0' has no prefix length: write it as "
              "NETWORK/PREFIX, e.g. 192.168.30.0/24",
              "t.yaml:5: networks.v6.subnet: 'fd00::/64' is not an IPv4 subnet (e.g. "
              "192.168.20.0/24)"]),
    "gateway outside the subnet": ("""
        name: x
        networks:
          lab:
            vlan: 20
            mode: nat
            subnet: 192.168.20.0/24
            gateway: 192.168.21.1
          b: {vlan: 30, mode: nat, subnet: 10.0.0.0/24, gateway: 10.0.0.255}
        nodes: {}
        """, ["t.yaml:7: networks.lab.gateway: gateway 192.168.21.1 is outside the subnet "
              "192.168.20.0/24",
              "t.yaml:8: networks.b.gateway: gateway 10.0.0.255 is the subnet's network or "
              "broadcast address"]),
    "node ip outside, on the gateway, wrong prefix": ("""
        name: x
        networks:
          lab: {vlan: 20, mode: nat, subnet: 192.168.20.0/24}
        nodes:
          n1: {kind: netns, nics: [{name: e0, network: lab, ip: 192.168.21.5/24}]}
          n2: {kind: netns, nics: [{name: e0, network: lab, ip: 192.168.20.1/24}]}
          n3: {kind: netns, nics: [{name: e0, network: lab, ip: 192.168.20.5/16}]}
          n4: {kind: netns, nics: [{name: e0, network: lab, ip: 192.168.20.255/24}]}
          n5: {kind: netns, nics: [{name: e0, network: lab, ip: "fd00::5/64"}]}
        """, ["t.yaml:5: nodes.n1.nics[0].ip: 192.168.21.5/24 is outside the subnet "
              "192.168.20.0/24 of network 'lab'",
              "t.yaml:6: nodes.n2.nics[0].ip: 192.168.20.1 is the gateway of network 'lab'",
              "t.yaml:7: nodes.n3.nics[0].ip: 192.168.20.5/16 has prefix length /16 but "
              "network 'lab' has /24",
              "t.yaml:8: nodes.n4.nics[0].ip: 192.168.20.255 is the network or broadcast "
              "address of 192.168.20.0/24"]),
    "dhcp range reversed and outside": ("""
        name: x
        networks:
          a:
            vlan: 20
            mode: nat
            subnet: 192.168.20.0/24
            dhcp: {range: [192.168.20.200, 192.168.20.100]}
          b:
            vlan: 30
            mode: nat
            subnet: 192.168.30.0/24
            dhcp:
              range: [192.168.30.100, 192.168.31.100]
          c: {vlan: 40, mode: nat, subnet: 10.0.0.0/24, dhcp: {range: [10.0.0.1, 10.0.0.9]}}
          d: {vlan: 50, mode: nat, subnet: 10.0.1.0/24, dhcp: {range: [10.0.1.2]}}
        nodes: {}
        """, ["t.yaml:7: networks.a.dhcp.range: range 192.168.20.200 - 192.168.20.100 is "
              "reversed: the first address must not be above the last",
              "t.yaml:13: networks.b.dhcp.range: range 192.168.30.100 - 192.168.31.100 is not "
              "inside the subnet 192.168.30.0/24",
              "t.yaml:14: networks.c.dhcp.range: range 10.0.0.1 - 10.0.0.9 includes the "
              "gateway 10.0.0.1",
              "t.yaml:15: networks.d.dhcp.range: needs exactly 2 items, got 1"]),
    "leases": ("""
        name: x
        networks:
          lab:
            vlan: 20
            mode: nat
            subnet: 192.168.20.0/24
            dhcp:
              range: [192.168.20.100, 192.168.20.200]
              leases:
                vm9: 192.168.20.50
                n1: 192.168.21.50
                n2: 192.168.20.7
                n3: 192.168.20.8
          other: {vlan: 30}
        nodes:
          n1: {kind: netns, nics: [{name: e0, network: lab, ip: dhcp}]}
          n2: {kind: netns, nics: [{name: e0, network: lab, ip: dhcp}]}
          n3: {kind: netns, nics: [{name: e0, network: other}]}
          n4: {kind: netns, nics: [{name: e0, network: lab, ip: 192.168.20.7/24}]}
        """, ["t.yaml:10: networks.lab.dhcp.leases.vm9: node 'vm9' is not defined (defined: "
              "n1, n2, n3, n4)",
              "t.yaml:11: networks.lab.dhcp.leases.n1: lease 192.168.21.50 is outside the "
              "subnet 192.168.20.0/24",
              "t.yaml:12: networks.lab.dhcp.leases.n2: lease 192.168.20.7 is the static "
              "address of node 'n4'",
              "t.yaml:13: networks.lab.dhcp.leases.n3: node 'n3' has no access NIC in network "
              "'lab'"]),
    "forwards": ("""
        name: x
        networks:
          lab:
            vlan: 20
            mode: nat
            subnet: 192.168.20.0/24
            forward:
              - {proto: tcp, port: 2222, to: "vm2:22"}
              - {proto: sctp, port: 0, to: "n1:99999"}
              - {proto: tcp, port: 80, to: "n1:80"}
              - {proto: tcp, port: 81, to: n2}
          wan:
            vlan: 30
            mode: nat
            subnet: 192.168.30.0/24
            forward: [{proto: tcp, port: 80, to: "n3:80"}]
        nodes:
          n1: {kind: netns, nics: [{name: e0, network: lab}]}
          n3: {kind: netns, nics: [{name: e0, network: wan, ip: 192.168.30.3/24}]}
        """, ["t.yaml:8: networks.lab.forward[0].to: node 'vm2' is not defined (defined: n1, "
              "n3)",
              "t.yaml:9: networks.lab.forward[1].proto: 'sctp' is not one of tcp | udp",
              "t.yaml:9: networks.lab.forward[1].port: 0 is out of range 1..65535",
              "t.yaml:9: networks.lab.forward[1].to: port 99999 is out of range 1..65535",
              "t.yaml:10: networks.lab.forward[2].to: node 'n1' has no fixed address in "
              "network 'lab': give it a static ip or a dhcp lease",
              "t.yaml:11: networks.lab.forward[3].to: 'n2' must match "
              "^[a-z][a-z0-9_-]{0,30}:[0-9]{1,5}$ (NODE:PORT)",
              "t.yaml:16: networks.wan.forward[0].port: host port tcp/80 is already forwarded "
              "by networks.lab.forward[2]"]),
    "reach": ("""
        name: x
        networks:
          a: {vlan: 10, mode: nat, subnet: 192.168.10.0/24, reach: [a, b, c, d]}
          b: {vlan: 20, mode: nat, subnet: 192.168.20.0/24, reach: [a]}
          c: {vlan: 30}
          e: {vlan: 40, reach: [a]}
        nodes: {}
        """, ["t.yaml:3: networks.a.reach[0]: network 'a' reaching itself: its nodes always "
              "reach each other; list other NAT networks",
              "t.yaml:3: networks.a.reach[2]: network 'c' is isolated, not nat: only NAT "
              "networks have a gateway to route between",
              "t.yaml:3: networks.a.reach[3]: network 'd' is not defined (defined: a, b, c, "
              "e)",
              "t.yaml:6: networks.e.reach: only allowed with mode: nat (this network has "
              "mode: isolated)"]),
    "forward to a node outside the network": ("""
        name: x
        networks:
          lab: {vlan: 20, mode: nat, subnet: 192.168.20.0/24, forward: [{proto: udp, port: 53,
                to: "n1:53"}]}
          iso: {vlan: 30}
        nodes:
          n1: {kind: netns, nics: [{name: e0, network: iso}]}
        """, ["t.yaml:4: networks.lab.forward[0].to: node 'n1' has no access NIC in network "
              "'lab'"]),
    "nat-only keys elsewhere": ("""
        name: x
        networks:
          a:
            vlan: 1
            gateway: 10.0.0.1
            dhcp: {range: [10.0.0.2, 10.0.0.3]}
            forward: []
            uplink: eth1
          b: {vlan: 2, mode: bridged, uplink: eth1, gateway: 10.0.0.1}
        nodes: {}
        """, ["t.yaml:5: networks.a.gateway: only allowed with mode: nat (this network has "
              "mode: isolated)",
              "t.yaml:6: networks.a.dhcp: only allowed with mode: nat (this network has mode: "
              "isolated)",
              "t.yaml:7: networks.a.forward: only allowed with mode: nat (this network has "
              "mode: isolated)",
              "t.yaml:8: networks.a.uplink: only allowed with mode: nat or bridged (this "
              "network has mode: isolated)",
              "t.yaml:9: networks.b.gateway: only allowed with mode: nat (this network has "
              "mode: bridged)"]),
    "ip dhcp only on nat access ports": ("""
        name: x
        networks:
          iso: {vlan: 1}
          lab: {vlan: 2, mode: nat, subnet: 10.0.2.0/24, dhcp: {range: [10.0.2.10, 10.0.2.20]}}
          bare: {vlan: 3, mode: nat, subnet: 10.0.3.0/24}
        nodes:
          n1:
            kind: netns
            nics:
              - {name: e0, network: iso, ip: dhcp}
              - {name: e1, trunk: [lab], ip: dhcp}
              - {name: e2, network: bare, ip: dhcp}
              - {name: e3, network: lab, ip: dhcp}
        """, ["t.yaml:10: nodes.n1.nics[0].ip: ip: dhcp needs a network with mode: nat; 'iso' "
              "is isolated",
              "t.yaml:11: nodes.n1.nics[1].ip: ip: dhcp needs an access port (network:), not "
              "a trunk",
              "t.yaml:12: nodes.n1.nics[2].ip: network 'bare' serves no DHCP: give it dhcp: "
              "{range: [FIRST, LAST]}, or give this NIC a static ip"]),
    "overlapping subnets": ("""
        name: x
        networks:
          a: {vlan: 1, mode: nat, subnet: 10.0.0.0/16}
          b: {vlan: 2, subnet: 10.0.5.0/24}
          c: {vlan: 3, mode: bridged, uplink: eth0, subnet: 10.1.0.0/24}
        nodes: {}
        """, ["t.yaml:4: networks.b.subnet: 10.0.5.0/24 overlaps the subnet 10.0.0.0/16 of "
              "network 'a'"]),
    "bridged": ("""
        name: x
        networks:
          a: {vlan: 1, mode: bridged}
          b: {vlan: 2, mode: bridged, uplink: eth2}
          c: {vlan: 3, mode: bridged, uplink: eth2, tagged: false}
          d: {vlan: 4, mode: bridged, uplink: eth2, tagged: true}
          e: {vlan: 5, mode: nat, subnet: 10.0.0.0/24, tagged: true}
          f: {vlan: 6, tagged: false}
        nodes: {}
        """, ["t.yaml:3: networks.a.uplink: required with mode: bridged",
              "t.yaml:5: networks.c.uplink: network 'b' is already bridged untagged onto eth2: "
              "at most one untagged network per uplink (set tagged: true on the others)",
              "t.yaml:7: networks.e.tagged: only allowed with mode: bridged (this network has "
              "mode: nat)",
              "t.yaml:8: networks.f.tagged: only allowed with mode: bridged (this network has "
              "mode: isolated)"]),
}


@pytest.mark.parametrize("text,expected", NAT_CASES.values(), ids=NAT_CASES.keys())
def test_address_and_mode_problems(text: str, expected: list[str]) -> None:
    assert problems(text) == expected


def test_problems_are_collected_across_the_file_in_line_order() -> None:
    found = problems("""
        name: x
        nodes:
          n1: {kind: netns, nics: [{name: eth0, network: z}]}
        networks:
          a: {vlan: 5000}
          b: {vlan: 10, vlna: 1}
          c: {vlan: 10}
        """)
    assert [p.split(":")[1] for p in found] == ["3", "5", "6", "7"]
    assert len(found) == 4


def test_errors_name_the_file_given() -> None:
    with pytest.raises(TopologyError) as info:
        parse_topology("name: x\nnetworks: {}\nnodes: {n: {kind: vm, vcpus: 0}}\n",
                       source="topologies/x.yaml")
    assert info.value.problems == [
        "topologies/x.yaml:3: nodes.n.vcpus: 0 is out of range 1..64"]


def test_a_bad_mode_does_not_cause_follow_on_errors() -> None:
    # mode is wrong, so whether subnet/dhcp/uplink are allowed cannot be judged: stay quiet.
    assert problems("""
        name: x
        networks:
          a: {vlan: 1, mode: NAT, subnet: 10.0.0.0/24, dhcp: {range: [10.0.0.5, 10.0.0.6]}}
        nodes:
          n: {kind: netns, nics: [{name: e0, network: a, ip: dhcp}]}
        """) == ["t.yaml:3: networks.a.mode: 'NAT' is not one of isolated | nat | bridged; "
                 "did you mean 'nat'?"]


def test_a_broken_section_does_not_cause_undefined_reference_errors() -> None:
    assert problems("""
        name: x
        networks: [office]
        nodes:
          n: {kind: netns, nics: [{name: e0, network: office}]}
        """) == ["t.yaml:2: networks: expected a mapping, got a list"]


def test_a_vm_has_at_most_nine_nics() -> None:
    nics = ", ".join(f"{{name: e{i}, network: a}}" for i in range(10))
    assert problems(f"""
        name: x
        networks: {{a: {{vlan: 10}}}}
        nodes:
          v: {{kind: vm, nics: [{nics}]}}
        """) == ["t.yaml:4: nodes.v.nics: 10 NICs: a VM has at most 9 (carry several "
                 "networks on a trunk NIC)"]
