"""Parsing the values that YAML leaves as strings: MACs, addresses, sizes.

Each parser returns the value or raises ``ValueError`` with a message for the user, so that
the loader can attach it to the right key path.  ``derive_mac`` lives here because a MAC
that the file does not give must still be the same on every run, every host and every
Python version: it is a pure function of the names.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface

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
        raise ValueError(f"{text!r} is not a MAC address (six hex octets: 52:54:00:12:34:56)")
    octets = [int(p, 16) for p in parts]
    if not any(octets):
        raise ValueError(f"{text!r} is the all-zero MAC, which no NIC may use")
    if octets[0] & 1:
        raise ValueError(f"{text!r} is a multicast MAC (the first octet is odd): "
                         "a NIC needs a unicast one, e.g. 02:...")
    return ":".join(f"{o:02x}" for o in octets)


def parse_interface(text: str) -> IPv4Interface | IPv6Interface:
    """An address with its prefix length, e.g. ``10.0.0.1/24``; host bits are the point."""
    if "/" not in text:
        raise ValueError(f"{text!r} has no prefix length: write it as ADDRESS/PREFIX, "
                         f"e.g. {text}/24")
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address with prefix length "
                         "(e.g. 10.0.0.1/24 or fd00::1/64)") from None


def parse_ip(text: str) -> IPv4Address | IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def parse_ipv4(text: str) -> IPv4Address:
    try:
        return IPv4Address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 address (e.g. 192.168.20.1)") from None


def parse_subnet(text: str) -> IPv4Network:
    """An IPv4 network without host bits; the error suggests the network it meant."""
    if "/" not in text:
        raise ValueError(f"{text!r} has no prefix length: write it as NETWORK/PREFIX, "
                         f"e.g. {text}/24")
    try:
        return IPv4Network(text)
    except ValueError:
        pass
    try:
        loose = IPv4Network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 subnet (e.g. 192.168.20.0/24)") from None
    raise ValueError(f"{text!r} has host bits set: did you mean {loose}?")


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string with an optional K, M or G (binary) suffix."""
    if isinstance(value, int):
        return value
    match = _SIZE.fullmatch(value)
    if match is None:
        raise ValueError(f"{value!r} is not a size: bytes, or a number with K, M or G")
    return int(match[1]) * _UNITS[match[2].lower()]
