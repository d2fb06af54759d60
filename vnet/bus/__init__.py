"""The multi-host bus: hosts coordinate through an MQTT broker (see docs/bus.md).

The pure core (``topics``, ``messages``, ``liveness``, ``location``, ``feeds``,
``advertise``, ``overlay``, ``epoch``, and ``view``, which composes them) takes ``now`` as
an argument and does no I/O; ``client`` is the thin asyncio adapter over aiomqtt that the
daemon drives.
"""
