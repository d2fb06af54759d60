"""The bus's I/O edge: one MQTT v5 connection per host, over aiomqtt 2.5 (asyncio).

    async with open_bus(BusConfig("mqtt://10.0.0.9"), "h1") as bus:
        await bus.publish_status({"lab1": LabRealised(3)})     # retained "online"
        async for event in bus:                                # Connected/Received/Disconnected
            ...                                                # feed a BusView, publish effects

Each connection takes a new epoch (``epoch.py``) and registers a Will: the retained status
``lost`` with that epoch.  After connecting it subscribes to the whole tree, re-publishes
the host's retained state (its status as ``online``, snapshot parts, clears) with the new
epoch, and says ``Connected(epoch)``; the status is refreshed every ``lease / 3`` seconds.
When the connection fails it says ``Disconnected(reason)`` and tries again with exponential
back-off (with jitter).  ``stop`` (or leaving the ``async with``) publishes ``offline`` and
disconnects cleanly, so the broker discards the Will.  Every received message is validated
(``messages.decode``); refused ones are counted by kind in ``stats``, logged once per kind,
and never reach the caller.  The aiomqtt ``Client`` is created inside the running loop, as it
requires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import aiomqtt
from paho.mqtt import client as paho_client
from paho.mqtt.reasoncodes import ReasonCode

from vnet.aiotasks import cancel_and_wait
from vnet.bus.epoch import EpochFile, next_epoch
from vnet.bus.errors import BusError
from vnet.bus.messages import (
    Cleared,
    LabRealised,
    Message,
    SnapshotPart,
    State,
    Status,
    decode,
    is_desired_state,
    is_retained,
    topic_of,
)
from vnet.bus.topics import TopicTree
from vnet.errors import VnetError
from vnet.topology.model import DEFAULT_TOPIC_ROOT
from vnet.topology.model import Bus as TopologyBus

log = logging.getLogger("vnet.bus")

_REFUSED_CODES = {4, 5, 134, 135}   # v3.1.1: bad credentials, not authorised; v5: the same
_QUEUE_SIZE = 4096


class BusConfigError(VnetError):
    """The bus configuration cannot work (bad broker URL, unreadable password file)."""


@dataclass(frozen=True)
class BusConfig:
    """How one host reaches the broker.  ``username`` defaults to the host name, which is
    what the ACL's ``%u`` expects."""

    broker: str
    topic_root: str = DEFAULT_TOPIC_ROOT
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: int = 5
    lease: float = 30.0
    address: str | None = None
    epoch_file: str | None = None
    backoff_min: float = 0.2
    backoff_max: float = 10.0
    timeout: float = 10.0

    @classmethod
    def from_topology(cls, bus: TopologyBus, **options: Any) -> BusConfig:
        return cls(bus.broker, bus.topic_root, **options)

    def endpoint(self) -> tuple[str, int, bool]:
        """(host, port, tls) of the broker URL."""
        return parse_broker_url(self.broker)


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise BusConfigError(f"bad broker URL {url!r}: {err}") from None
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise BusConfigError(f"bad broker URL {url!r}: expected mqtt://HOST[:PORT] or "
                             "mqtts://HOST[:PORT]")
    if parts.username or parts.password or parts.path not in ("", "/"):
        raise BusConfigError(f"bad broker URL {url!r}: give only scheme, host and port; "
                             "credentials go in the bus configuration")
    tls = parts.scheme == "mqtts"
    return parts.hostname, port or (8883 if tls else 1883), tls


@dataclass(frozen=True)
class Connected:
    epoch: int
    at: float


@dataclass(frozen=True)
class Received:
    message: Message
    topic: str
    at: float
    retained: bool = False     # sent on our subscription (old news), not as it happened


@dataclass(frozen=True)
class Disconnected:
    reason: str
    at: float


BusEvent = Connected | Received | Disconnected


@dataclass(frozen=True)
class Refusal:
    """The broker's PUBACK refused a publish (MQTT v5 reason code, e.g. 135 not authorised:
    its ACL does not let this user write the topic)."""

    topic: str
    code: int
    reason: str

    def __str__(self) -> str:
        return f"the broker refused a publish to {self.topic}: {self.reason} (reason {self.code})"


class AckedClient(aiomqtt.Client):
    """aiomqtt's client whose publish says what the broker's PUBACK answered.

    aiomqtt 2.5 receives paho's ``on_publish(..., reason_code, ...)`` and drops the reason
    code, so a publish the broker refuses (mosquitto: 135 when the ACL denies it) looks
    confirmed.  ``publish_acked`` issues the publish through paho as aiomqtt does and waits
    for that message id's PUBACK itself (aiomqtt internals: ``_client``, ``_on_publish``,
    pinned by ``aiomqtt>=2.5,<3``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acks: dict[int, asyncio.Future[ReasonCode]] = {}

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: ReasonCode,
                    properties: Any) -> None:
        ack = self._acks.pop(mid, None)
        if ack is not None and not ack.done():
            ack.set_result(reason_code)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def publish_acked(self, topic: str, payload: bytes, *, qos: int, retain: bool,
                            timeout: float) -> Refusal | None:
        """Publish; ``Refusal`` if the broker's PUBACK refused it (QoS 1), else None.
        Raises ``MqttError`` as aiomqtt's publish does (not connected, timed out)."""
        info = self._client.publish(topic, payload, qos, retain)
        if info.rc != paho_client.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if qos == 0 or info.is_published():
            return None
        # the PUBACK is read on this loop, so it cannot have come before this line
        ack: asyncio.Future[ReasonCode] = asyncio.get_running_loop().create_future()
        self._acks[info.mid] = ack
        try:
            async with asyncio.timeout(timeout):
                reason = await ack
        except TimeoutError:
            raise aiomqtt.MqttError("Operation timed out") from None
        finally:
            self._acks.pop(info.mid, None)
        if reason.is_failure:
            return Refusal(topic, reason.value, reason.getName())
        return None


@dataclass
class BusStats:
    """Counters for ``vnet status`` and logs."""

    state: str = "connecting"      # connecting | connected | backoff | stopped
    connects: int = 0
    received: int = 0
    published: int = 0
    publish_failed: int = 0
    refused: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    last_error: str | None = None
    last_refusal: Refusal | None = None
    _logged: set[str] = field(default_factory=set)

    def refuse(self, refusal: Refusal) -> None:
        """Count a publish the broker refused; log the first to each topic."""
        self.refused += 1
        self.publish_failed += 1
        self.last_refusal, self.last_error = refusal, str(refusal)
        key = f"refused {refusal.topic}"
        if key in self._logged:
            log.debug("bus: %s", refusal)
        else:
            self._logged.add(key)
            log.warning("bus: %s; check the broker's ACL for this host's user", refusal)

    def drop(self, error: BusError) -> None:
        """Count a refused message; log the first of each kind (later ones at debug)."""
        self.dropped[error.kind] += 1
        if error.kind in self._logged:
            log.debug("dropped a bus message: %s", error)
        else:
            self._logged.add(error.kind)
            log.warning("dropped a bus message (%s; further ones of this kind are counted "
                        "in the bus statistics): %s", error.kind, error.detail)

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "connects": self.connects, "received": self.received,
                "published": self.published, "publish_failed": self.publish_failed,
                "refused": self.refused, "dropped": dict(self.dropped),
                "last_error": self.last_error}


class BusClient:
    """One host's connection to the bus (see module docstring)."""

    def __init__(self, config: BusConfig, host: str, *,
                 now: Callable[[], float] = time.monotonic,
                 wall_ns: Callable[[], int] = time.time_ns) -> None:
        self.config = config
        self.host = host
        self.tree = TopicTree(config.topic_root)
        self.tree.status(host)                       # checks the host name
        self.endpoint = config.endpoint()
        self.stats = BusStats()
        self.epoch = 0
        self._now = now
        self._wall_ns = wall_ns
        self._labs: dict[str, LabRealised] = {}
        self._status_wanted = False
        self._retained: dict[str, Message] = {}
        self._events: asyncio.Queue[BusEvent | None] = asyncio.Queue(_QUEUE_SIZE)
        self._client: AckedClient | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- the daemon's API -------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name=f"bus-{self.host}")

    async def stop(self) -> None:
        """Publish ``offline`` (if connected) and disconnect cleanly: no Will."""
        if self._task is None or self._stopping.is_set():
            return
        self._stopping.set()
        client = self._client
        if client is not None and self._status_wanted:
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                await self._send(client, self._status("offline"))
        await cancel_and_wait([self._task])
        self._client = None
        self.stats.state = "stopped"
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(None)           # ends iterations over the bus

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def publish_status(self, labs: Mapping[str, LabRealised] | None = None) -> bool:
        """Publish (and keep re-publishing) this host's retained ``online`` status."""
        if labs is not None:
            self._labs = dict(labs)
        self._status_wanted = True
        return await self.publish(self._status("online"))

    async def publish(self, message: Message) -> bool:
        """Publish one message of this host (QoS 1; retained ones are also remembered and
        re-published after a reconnect).  False when not connected, the broker failed, or
        it refused the publish (then ``stats.last_refusal`` says so)."""
        self._check_own(message)
        if is_retained(message) and not is_desired_state(message):
            # re-published after a reconnect; desired state is not: a newer generation
            # published meanwhile by another host must not be overwritten by this one
            self._retained[topic_of(self.tree, message)] = message
        client = self._client
        if client is None:
            self.stats.publish_failed += 1
            return False
        try:
            return await self._send(client, message)
        except (aiomqtt.MqttError, TimeoutError) as err:
            self.stats.publish_failed += 1
            log.debug("publish failed: %s", err)
            return False

    def __aiter__(self) -> BusClient:
        return self

    async def __anext__(self) -> BusEvent:
        """The next event; a wait cancelled (``wait_for`` timing out) loses nothing."""
        event = await self._events.get()
        if event is None:
            self._events.put_nowait(None)       # every iterator ends, not just this one
            raise StopAsyncIteration
        return event

    async def __aenter__(self) -> BusClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- internals --------------------------------------------------------------------------

    def _status(self, state: State) -> Status:
        return Status(self.host, state, self.epoch or 1, self.config.lease,
                      self.config.address, dict(self._labs))

    def _check_own(self, message: Message) -> None:
        host = getattr(message, "host", None)
        if isinstance(message, Cleared):
            host = getattr(message.topic, "host", None)
        if is_desired_state(message):
            return               # any host may publish these for vnet up/down (docs/bus.md)
        if host != self.host:
            raise ValueError(f"host {self.host!r} cannot publish a message of host {host!r}")

    async def _send(self, client: AckedClient, message: Message) -> bool:
        """Publish at QoS 1; False (counted, logged) if the broker refused it."""
        payload = b"" if isinstance(message, Cleared) else message.to_json()
        refusal = await client.publish_acked(topic_of(self.tree, message), payload, qos=1,
                                             retain=is_retained(message),
                                             timeout=self.config.timeout)
        if refusal is not None:
            self.stats.refuse(refusal)
            return False
        self.stats.published += 1
        return True

    def _next_epoch(self) -> int:
        if self.config.epoch_file is not None:
            return EpochFile(self.config.epoch_file).advance(self._wall_ns())
        return next_epoch(self._wall_ns(), self.epoch or None)

    def _password(self) -> str | None:
        if self.config.password_file is None:
            return self.config.password
        try:
            with open(self.config.password_file, encoding="utf-8") as f:
                return f.read().strip()
        except OSError as err:
            raise BusConfigError(f"cannot read the bus password file "
                                 f"{self.config.password_file}: {err.strerror}") from None

    def _make_client(self, epoch: int) -> AckedClient:
        hostname, port, tls = self.endpoint
        will = Status(self.host, "lost", epoch, self.config.lease, self.config.address)
        tls_params = (aiomqtt.TLSParameters(ca_certs=self.config.ca_file,
                                            certfile=self.config.cert_file,
                                            keyfile=self.config.key_file) if tls else None)
        return AckedClient(
            hostname, port, username=self.config.username or self.host,
            password=self._password(), identifier=f"vnet-{self.host}",
            protocol=aiomqtt.ProtocolVersion.V5, clean_start=True,
            will=aiomqtt.Will(self.tree.status(self.host), will.to_json(), qos=1, retain=True),
            keepalive=self.config.keepalive, timeout=self.config.timeout,
            tls_params=tls_params, logger=logging.getLogger("vnet.bus.mqtt"))

    async def _run(self) -> None:
        delay = self.config.backoff_min
        while not self._stopping.is_set():
            self.stats.state = "connecting"
            epoch = 0
            try:
                epoch = self._next_epoch()
                client = self._make_client(epoch)
                async with client:
                    delay = self.config.backoff_min
                    await self._session(client, epoch)
                reason = "the broker closed the connection"
            except (aiomqtt.MqttError, BusConfigError, TimeoutError, OSError) as err:
                reason = self._explain(err)
            except Exception as err:   # a bug must not end the bus silently: log, reconnect
                log.exception("bus: internal error in the connection loop")
                reason = f"internal error ({type(err).__name__}: {err}); reconnecting"
            self._client = None
            if self._stopping.is_set():
                return
            if reason != self.stats.last_error:
                log.warning("bus: %s; retrying", reason)
            self.stats.state, self.stats.last_error = "backoff", reason
            await self._events.put(Disconnected(reason, self._now()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(),
                                       delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.config.backoff_max)

    async def _session(self, client: AckedClient, epoch: int) -> None:
        await client.subscribe(self.tree.subscription, qos=1, timeout=self.config.timeout)
        self.epoch = epoch
        self._client = client
        self.stats.state, self.stats.last_error = "connected", None
        self.stats.connects += 1
        log.info("bus: connected to %s:%d as %s, epoch %d", *self.endpoint[:2], self.host,
                 epoch)
        if self._status_wanted:
            await self._send(client, self._status("online"))
        for message in list(self._retained.values()):
            if isinstance(message, Status):
                continue
            if isinstance(message, SnapshotPart):
                message = replace(message, epoch=epoch)
            await self._send(client, message)
        await self._events.put(Connected(epoch, self._now()))
        refresher = asyncio.get_running_loop().create_task(self._refresh(client))
        try:
            async for raw in client.messages:
                await self._receive(str(raw.topic), raw.payload, bool(raw.retain))
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await refresher

    async def _refresh(self, client: AckedClient) -> None:
        while True:
            await asyncio.sleep(self.config.lease / 3)
            if self._status_wanted:
                with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                    await self._send(client, self._status("online"))

    async def _receive(self, topic: str, payload: Any, retained: bool = False) -> None:
        if isinstance(payload, str):
            payload = payload.encode()
        elif payload is None:
            payload = b""
        elif not isinstance(payload, bytes | bytearray):
            self.stats.drop(BusError("malformed", f"{topic[:200]!r}: a "
                                                  f"{type(payload).__name__} payload"))
            return
        result = decode(self.tree, topic, bytes(payload))
        if isinstance(result, BusError):
            self.stats.drop(result)
            return
        self.stats.received += 1
        await self._events.put(Received(result, topic, self._now(), retained))

    def _explain(self, err: BaseException) -> str:
        """A sentence for the log and ``stats.last_error``: no raw errno text."""
        hostname, port, _ = self.endpoint
        where = f"{hostname}:{port}"
        if isinstance(err, BusConfigError):
            return str(err)
        if isinstance(err, aiomqtt.MqttCodeError):
            code = err.rc.value if isinstance(err.rc, ReasonCode) else err.rc
            if code in _REFUSED_CODES:
                return (f"the broker at {where} refused user "
                        f"{self.config.username or self.host!r} (not authorised): check the "
                        "bus username and password, and the broker's password file")
        text = str(err)
        match = re.search(r"\[Errno -?\d+\] (.*)", text)
        if match:
            text = match.group(1)
        if "CERTIFICATE_VERIFY_FAILED" in text:
            why = re.sub(r".*certificate verify failed: ?| \(_ssl\.c:\d+\)", "", text)
            return (f"the broker at {where} presented a certificate the bus CA file does not "
                    f"trust ({why or 'verify failed'}): check ca_file and the broker's "
                    "certificate")
        if "SSL" in text:
            text = re.sub(r" \(_ssl\.c:\d+\)", "", text)
            return f"TLS with the broker at {where} failed: {text}"
        if "refused" in text.lower():
            return (f"cannot connect to the broker at {where}: connection refused (is "
                    "mosquitto running and listening there?)")
        if isinstance(err, TimeoutError) or "timed out" in text.lower():
            return f"the broker at {where} did not answer in time"
        return f"lost the broker at {where}: {text or type(err).__name__}"


def open_bus(config: BusConfig, host: str, *, now: Callable[[], float] = time.monotonic,
             wall_ns: Callable[[], int] = time.time_ns) -> BusClient:
    """``async with open_bus(config, host) as bus:`` — connect (and keep connecting)."""
    return BusClient(config, host, now=now, wall_ns=wall_ns)


__all__ = ["AckedClient", "BusClient", "BusConfig", "BusConfigError", "BusEvent", "BusStats",
           "Connected", "Disconnected", "Received", "Refusal", "open_bus"]
