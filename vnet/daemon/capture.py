"""``vnet capture`` in vnetd: which datapath port a node's NIC is, and the mirror's relay.

The stream, end to end: the CLI's API connection asks for ``capture``; vnetd opens a
connection of the capture's own to the datapath's control socket and sends it a
``protocol.Mirror``; the datapath answers, and from then on writes the mirror's records
(``vnet.datapath.mirror``) to that connection.  vnetd answers the CLI and relays the bytes
as they come, unchanged.  Every end is a connection's end, so nothing can leak: the CLI
half-closes its side to stop (Ctrl-C, COUNT) and vnetd half-closes the datapath's, which
removes the mirror, sends the last record (the drop count) and closes, and vnetd closes
the CLI's; a CLI, a vnetd or a datapath that dies closes its connections, with the same
effect.  Backpressure goes back along the chain: a CLI that reads slowly makes vnetd read
slowly, and the datapath drops (and counts) what its bounded stream buffer cannot take.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from vnet import jsonlines
from vnet.aiotasks import cancel_and_wait
from vnet.daemon.naming import port_name
from vnet.daemon.nics import Node, nics_of, pick_nic
from vnet.daemon.requests import CaptureRequest
from vnet.datapath import protocol
from vnet.errors import DaemonError, DatapathError, DatapathGone, ProtocolError

CHUNK = 1 << 16
ANSWER_TIMEOUT = 30.0


def find_port(nodes: list[Node], request: CaptureRequest) -> tuple[Node, str]:
    """The node and NIC ``request`` names among the nodes up (of its lab, if it names
    one); an error that lists the ports there are, if it names none of them."""
    nodes = [n for n in nodes if request.lab in (None, n.lab)]
    found = [n for n in nodes if n.node == request.node]
    ports = ", ".join(sorted(f"{n.node}:{nic}" + ("" if request.lab else f" ({n.lab})")
                             for n in nodes for nic in nics_of(n))) or "none"
    where = f" in lab {request.lab}" if request.lab else ""
    if not found:
        raise DaemonError(f"no node {request.node!r} is up{where}; the ports to capture are: "
                          f"{ports}")
    if len(found) > 1:
        raise DaemonError(f"node {request.node!r} exists in labs "
                          f"{', '.join(sorted(f.lab for f in found))}; say which with --lab")
    node = found[0]
    nic = pick_nic(node, request.nic, f"; the ports to capture are: {ports}")
    return node, nic


def mirror_request(node: Node, nic: str, direction: str) -> protocol.Mirror:
    return protocol.Mirror(node.lab, port_name(node.node, nic), direction)


class Relay:
    """One capture's connection to the datapath, mirroring, and its relay to a client."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, control_path: Path, request: protocol.Mirror) -> Relay:
        """Connect and ask for the mirror; ``DatapathError`` if the datapath refuses."""
        try:
            reader, writer = await asyncio.open_unix_connection(str(control_path),
                                                                limit=jsonlines.MAX_LINE)
        except OSError as err:
            raise DatapathGone(f"the datapath is not reachable on {control_path}: "
                               f"{err.strerror or err}") from None
        relay = cls(reader, writer)
        try:
            writer.write(protocol.encode(request))
            async with asyncio.timeout(ANSWER_TIMEOUT):
                line = await reader.readline()
            if not line.endswith(b"\n"):
                raise DatapathGone("the datapath closed the connection before it answered "
                                   "the mirror request")
            protocol.result(jsonlines.decode(line), request.op)
        except (OSError, ProtocolError, ValueError) as err:
            relay.close()
            raise DatapathError(f"the datapath's mirror failed: {err}") from None
        except TimeoutError:
            relay.close()
            raise DatapathError(f"the datapath did not answer the mirror request within "
                                f"{ANSWER_TIMEOUT:.0f} s") from None
        except BaseException:
            relay.close()
            raise
        return relay

    async def run(self, client_reader: asyncio.StreamReader,
                  client_writer: asyncio.StreamWriter) -> None:
        """Relay the records to the client until the datapath closes the stream; the
        client's end (EOF) ends the mirror."""
        watching = asyncio.create_task(self._client_ends(client_reader))
        try:
            while chunk := await self.reader.read(CHUNK):
                client_writer.write(chunk)
                await client_writer.drain()
        except (ConnectionError, OSError):
            pass    # the client is gone: closing the datapath's side ends the mirror
        finally:
            await cancel_and_wait([watching])
            self.close()

    async def _client_ends(self, client_reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while await client_reader.read(CHUNK):
                pass    # a client sends nothing more; its EOF is what counts
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            self.writer.write_eof()   # the datapath sends the last record, then closes

    def close(self) -> None:
        self.writer.close()


def describe(node: Node, nic: str, request: protocol.Mirror) -> dict[str, Any]:
    return {"lab": node.lab, "node": node.node, "nic": nic, "port": request.port,
            "direction": request.direction}
