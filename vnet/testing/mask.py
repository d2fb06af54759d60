"""Expected frames with don't-care fields, in the vocabulary of p4lang PTF's ``Mask``."""

from __future__ import annotations

from scapy.fields import _BitField
from scapy.packet import Packet


class Mask:
    """An expected frame whose masked-out bits may differ (TTL, checksums, IDs, ...).

    >>> m = Mask(Ether()/IP()/ICMP())
    >>> m.set_do_not_care_packet(IP, "ttl"); m.set_do_not_care_packet(IP, "chksum")
    """

    def __init__(self, packet: Packet | bytes) -> None:
        self.packet = packet if isinstance(packet, Packet) else None
        self.expected = bytes(packet)
        self.mask = bytearray(b"\xff" * len(self.expected))

    def set_do_not_care(self, offset_bits: int, width_bits: int) -> None:
        for bit in range(offset_bits, offset_bits + width_bits):
            if bit // 8 < len(self.mask):
                self.mask[bit // 8] &= ~(0x80 >> (bit % 8)) & 0xFF

    def set_do_not_care_packet(self, layer: type[Packet], field: str) -> None:
        """Ignore ``field`` of the first ``layer`` in the packet (e.g. ``IP``, ``"ttl"``)."""
        if self.packet is None:
            raise TypeError("field masks need the expected frame as a scapy packet")
        offset, width = field_bits(self.packet, layer, field)
        self.set_do_not_care(offset, width)

    def set_ignore_extra_bytes(self) -> None:
        """Accept frames longer than the expected one (padding, trailers)."""
        self.ignore_extra = True

    ignore_extra = False

    def matches(self, frame: bytes) -> bool:
        if len(frame) != len(self.expected) and not (
                self.ignore_extra and len(frame) > len(self.expected)):
            return False
        return all((a ^ b) & m == 0 for a, b, m in zip(frame, self.expected, self.mask,
                                                        strict=False))

    def __repr__(self) -> str:
        return f"Mask({self.packet!r})" if self.packet is not None else "Mask(<bytes>)"


def field_bits(packet: Packet, layer: type[Packet], field: str) -> tuple[int, int]:
    """Bit offset and width of ``field`` in the first ``layer`` of ``packet``, as built."""
    built = packet.__class__(bytes(packet))  # dissected again, so every field holds its value
    offset = 0
    current: Packet | None = built
    while current is not None and not isinstance(current, layer):
        offset += (len(bytes(current)) - len(bytes(current.payload))) * 8
        current = current.payload if current.payload else None
    if current is None:
        raise ValueError(f"the packet has no {layer.__name__} layer")
    for fld in current.fields_desc:
        if isinstance(fld, _BitField):
            width = int(fld.size)
        else:
            width = len(fld.addfield(current, b"", current.getfieldval(fld.name))) * 8
        if fld.name == field:
            return offset, width
        offset += width
    raise ValueError(f"{layer.__name__} has no field {field!r}")
