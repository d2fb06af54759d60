"""Parsing the values that YAML leaves as strings: MACs, addresses, sizes, broker URLs.

Each parser returns the value or raises ``ValueError`` with a message for the user, so that
the loader can attach it to the right key path.  ``derive_mac`` lives here because a MAC
that the file does not give must still be the same on every run, every host and every
Python version: it is a pure function of the names; so, for the same reason, do
``derive_vni`` and ``assign_vnis``, which every host of a lab must compute alike.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface

from vnet.topology.report import clip, quote

_SIZE = re.compile(r"([0-9]+)([KMGkmg]?)")
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}


def derive_mac(lab: str, node: str, nic: str) -> str:
    """The stable MAC of a NIC that does not set one.

    ``02`` (locally administered, unicast) followed by the first 5 bytes of
    ``blake2b(f"{lab}/{node}/{nic}", digest_size=5)``.  Names cannot contain ``/``, so
    different (lab, node, nic) triples hash different strings.
    """
    digest = hashlib.blake2b(f"{lab}/{node}/{nic}".encode(), digest_size=5).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest))


def parse_mac(text: str) -> str:
    """A unicast MAC in lower-case colon form; accepts ``:`` or ``-`` separators."""
    parts = re.split(r"[:-]", text)
    if len(parts) != 6 or not all(re.fullmatch(r"[0-9A-Fa-f]{2}", p) for p in parts):
        raise ValueError(f"{quote(text)} is not a MAC address (six hex octets: 52:54:00:12:34:56)")
    octets = [int(p, 16) for p in parts]
    if not any(octets):
        raise ValueError(f"{quote(text)} is the all-zero MAC, which no NIC may use")
    if octets[0] & 1:
        raise ValueError(f"{quote(text)} is a multicast MAC (the first octet is odd): "
                         "a NIC needs a unicast one, e.g. 02:...")
    return ":".join(f"{o:02x}" for o in octets)


def parse_interface(text: str) -> IPv4Interface | IPv6Interface:
    """An address with its prefix length, e.g. ``10.0.0.1/24``; host bits are the point."""
    if "/" not in text:
        raise ValueError(f"{quote(text)} has no prefix length: write it as ADDRESS/PREFIX, "
                         f"e.g. {clip(text)}/24")
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        raise ValueError(f"{quote(text)} is not an IP address with prefix length "
                         "(e.g. 10.0.0.1/24 or fd00::1/64)") from None


def parse_ip(text: str) -> IPv4Address | IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{quote(text)} is not an IP address") from None


def parse_ipv4(text: str) -> IPv4Address:
    try:
        return IPv4Address(text)
    except ValueError:
        raise ValueError(f"{quote(text)} is not an IPv4 address (e.g. 192.168.20.1)") from None


def parse_subnet(text: str) -> IPv4Network:
    """An IPv4 network without host bits; the error suggests the network it meant."""
    if "/" not in text:
        raise ValueError(f"{quote(text)} has no prefix length: write it as NETWORK/PREFIX, "
                         f"e.g. {clip(text)}/24")
    try:
        return IPv4Network(text)
    except ValueError:
        pass
    try:
        loose = IPv4Network(text, strict=False)
    except ValueError:
        raise ValueError(f"{quote(text)} is not an IPv4 subnet (e.g. 192.168.20.0/24)") from None
    raise ValueError(f"{quote(text)} has host bits set: did you mean {loose}?")


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string with an optional K, M or G (binary) suffix."""
    if isinstance(value, int):
        return value
    match = _SIZE.fullmatch(value)
    if match is None:
        raise ValueError(f"{quote(value)} is not a size: bytes, or a number with K, M or G")
    if len(match[1]) > 20:  # more than any memory, and int() refuses 4,300 digits
        raise ValueError(f"{quote(value)} is far too large a size")
    return int(match[1]) * _UNITS[match[2].lower()]


# -- multi-host values ---------------------------------------------------------------------------

VNI_MAX = 2**24 - 1
DERIVED_VNI_MIN = 2**20
"""Derived VNIs lie in ``DERIVED_VNI_MIN..VNI_MAX``: an explicit ``vni:`` below it never meets
a derived one, of this lab or of another lab on the same hosts."""


def derive_vni(lab: str, network: str) -> int:
    """The VNI a network gets when the file sets none, before collisions are resolved:
    ``DERIVED_VNI_MIN + blake2b(f"{lab}/{network}", 8 bytes, person "vnet-vni") mod
    (VNI_MAX - DERIVED_VNI_MIN + 1)``; stable across runs, hosts and Python versions."""
    digest = hashlib.blake2b(f"{lab}/{network}".encode(), digest_size=8,
                             person=b"vnet-vni").digest()
    return DERIVED_VNI_MIN + int.from_bytes(digest, "big") % (VNI_MAX - DERIVED_VNI_MIN + 1)


def assign_vnis(lab: str, networks: Iterable[tuple[str, int | None]]) -> dict[str, int]:
    """Every network's VNI, from ``(name, explicit vni or None)`` pairs.

    Explicit VNIs are kept (the loader checked they are unique).  The others take
    ``derive_vni`` in network-name order; one that is taken moves to the next free value
    (after ``VNI_MAX`` comes ``DERIVED_VNI_MIN``).  Name order, not file order, so that
    reordering a file changes no VNI; the result depends only on the lab name and the set of
    (network, explicit vni), which every host has alike.
    """
    pairs = list(networks)
    out = {name: vni for name, vni in pairs if vni is not None}
    taken = set(out.values())
    for name in sorted(name for name, vni in pairs if vni is None):
        vni = derive_vni(lab, name)
        while vni in taken:
            vni = vni + 1 if vni < VNI_MAX else DERIVED_VNI_MIN
        taken.add(vni)
        out[name] = vni
    return {name: out[name] for name, _ in pairs}


MQTT_PORT, MQTTS_PORT = 1883, 8883
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_SECRET_HINT = ("credentials do not go in the topology, which every host shares: set them in "
                "each host's vnetd configuration")


def parse_broker(text: str) -> tuple[str, int, bool]:
    """``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]`` -> ``(host, port, tls)``.

    HOST is a DNS name, an IPv4 address or a bracketed IPv6 address (returned without the
    brackets); PORT defaults to 1883, or 8883 with TLS.  No user, password, path or query.
    """
    form = "mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"{quote(text)} is not a broker URL: write {form}")
    if "@" in rest:
        raise ValueError(f"{quote(text)} has a user or password: {_SECRET_HINT}; write {form}")
    if any(c in rest for c in "/?#"):
        raise ValueError(f"{quote(text)} has a path, query or fragment: write {form}")
    if rest.startswith("["):
        host, bracket, port_text = rest[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise ValueError(f"{quote(text)}: an IPv6 broker is written mqtt://[ADDRESS]:PORT")
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"{quote(text)}: {quote(host)} is not an IPv6 address") from None
        has_port, port_text = bool(port_text), port_text[1:]
    else:
        if rest.count(":") > 1:
            raise ValueError(f"{quote(text)}: put an IPv6 address in brackets: "
                             "mqtt://[fd00::1]:1883")
        host, colon, port_text = rest.partition(":")
        has_port = bool(colon)
        _check_broker_host(text, host)
    tls = scheme == "mqtts"
    if not has_port:
        return host, MQTTS_PORT if tls else MQTT_PORT, tls
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{quote(text)}: the port must be a number in 1..65535, got "
                         f"{quote(port_text)}")
    return host, int(port_text), tls


def _check_broker_host(text: str, host: str) -> None:
    labels = host.split(".")
    if all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{quote(text)}: {quote(host)} is not an IPv4 address") from None
    elif len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{quote(text)}: {quote(host)} is not a host name or IP address")
