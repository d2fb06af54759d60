"""The API's two sessions, ``exec`` and ``console.attach``: more than a request and a reply.

``exec``: vnetd answers the request with ``{"fds": 3}``, takes the caller's stdin, stdout
and stderr (``fdpass``), starts the helper that becomes the command in the node as the
caller (``attach.ExecPlan``), forwards the ``{"signal": N}`` lines the client sends, and
answers last with the command's exit (``{"exit": N}`` or ``{"signal": N}``).  A client that
hangs up takes its command with it: its process group is killed, so nothing is orphaned.

``console.attach``: vnetd connects to the VM runner's console socket (root's alone) and
answers with the connection attached; the client then talks to the runner directly.

Each session says how it went (``Outcome``) for the audit as soon as it is known: an exec
when its command started, not when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable

from vnet import jsonlines
from vnet.daemon import attach
from vnet.daemon.api import Outcome
from vnet.daemon.audit import Peer
from vnet.daemon.defaults import API_VERSION, EXEC_FDS
from vnet.daemon.fdpass import Channel
from vnet.daemon.requests import ConsoleRequest, ExecRequest
from vnet.errors import DaemonError, NetnsError, describe_os_error
from vnet.host import netns

log = logging.getLogger("vnet.api")


Record = Callable[[Outcome], None]
FindNode = Callable[[str, str | None], attach.NodeView]


async def run_exec(request: ExecRequest, peer: Peer, channel: Channel, find: FindNode,
                   record: Record) -> None:
    detail: dict[str, object] = {"node": request.node,
                                 "command": attach.command_line(request.command)}
    lab = request.lab
    try:
        node = find(request.node, request.lab)
        lab = node.lab
        plan = attach.exec_plan(node, peer, request, os.getpid())
        try:   # gone? say so now, not in the helper
            os.close(netns.open_netns(plan.netns))
        except NetnsError as err:
            raise DaemonError(f"node {node.node} of lab {lab} cannot be entered: {err}; "
                              f"rebuild the lab with 'vnet down --lab {lab}' and "
                              f"'vnet up FILE'") from None
        fds = await channel.ask_for_fds(jsonlines.ok({"lab": lab, "node": node.node,
                                                      "fds": EXEC_FDS}),
                                        EXEC_FDS)
        spec = spec_file(plan.spec())
        try:
            process = await asyncio.create_subprocess_exec(
                *plan.helper(spec), stdin=fds[0], stdout=fds[1], stderr=fds[2],
                pass_fds=(spec,), start_new_session=True)
        finally:
            for fd in (*fds, spec):
                os.close(fd)
    except DaemonError as err:
        record(Outcome(lab, str(err), detail))
        await channel.send(jsonlines.failed(str(err)))
        return
    except OSError as err:
        message = f"cannot start the command in node {request.node}: {describe_os_error(err)}"
        record(Outcome(lab, message, detail))
        await channel.send(jsonlines.failed(message))
        return
    record(Outcome(lab, None, {**detail, "pid": process.pid}))
    log.info("exec in %s/%s as uid %d: pid %d", lab, request.node, peer.uid, process.pid)
    try:
        returncode = await _follow(process, channel)
    finally:
        if process.returncode is None:   # the client went: no orphan left behind
            _kill_group(process.pid, signal.SIGKILL)
            await process.wait()
    if returncode is not None:
        await channel.send(jsonlines.ok(attach.exit_result(returncode)))


async def _follow(process: asyncio.subprocess.Process, channel: Channel) -> int | None:
    """Forward the client's signals until the command ends (its return code) or the client
    hangs up (None)."""
    exited = asyncio.ensure_future(process.wait())
    try:
        while True:
            message = asyncio.ensure_future(channel.next_message())
            done, _ = await asyncio.wait({exited, message},
                                         return_when=asyncio.FIRST_COMPLETED)
            if exited in done:
                message.cancel()
                return exited.result()
            received = message.result()
            if received is None:
                return None
            sig = attach.signal_to_forward(received)
            if sig is not None:
                _kill_group(process.pid, sig)
    finally:
        if not exited.done():
            exited.cancel()


def spec_file(spec: str) -> int:
    """An anonymous file (``memfd``) holding ``spec``, read from its start."""
    fd = os.memfd_create("vnet-exec-spec", os.MFD_CLOEXEC)
    try:
        data = spec.encode()
        while data:
            data = data[os.write(fd, data):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def run_console_attach(request: ConsoleRequest, channel: Channel, find: FindNode,
                             record: Record) -> None:
    detail: dict[str, object] = {"node": request.node}
    lab = request.lab
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        node = find(request.node, request.lab)
        lab = node.lab
        path = attach.console_socket(node)
        try:
            async with asyncio.timeout(channel.timeout):
                await asyncio.get_running_loop().sock_connect(sock, path)
        except (OSError, TimeoutError) as err:
            why = describe_os_error(err) if isinstance(err, OSError) else "no answer"
            raise DaemonError(f"the console of vm {node.node!r} does not answer ({why}); see "
                              f"'vnet status' and the runner's log") from None
        sock.setblocking(True)   # the client's copy: it reads and writes it plainly
        record(Outcome(lab, None, detail))
        await channel.send_with_fds(
            {**jsonlines.ok({"lab": lab, "node": node.node}), "api": API_VERSION},
            [sock.fileno()])
    except DaemonError as err:
        record(Outcome(lab, str(err), detail))
        await channel.send(jsonlines.failed(str(err)))
    finally:
        sock.close()
