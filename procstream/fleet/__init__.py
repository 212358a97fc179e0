"""Fleet: every host publishes its events to NATS JetStream, and readers take them from there.

- :mod:`.subjects`: the subject layout, message ids and the stream's defaults (pure).
- :mod:`.options`: the NATS command-line options shared by ``serve`` and ``tail``, and
  what they turn into (connection settings, the stream's settings).
- :mod:`.link`: one connection to NATS that reconnects by itself and says how it is.
- :mod:`.stream`: create or verify the JetStream stream and the host-state bucket.
- :mod:`.publisher`: ``serve --nats``: the hub's resume buffer to JetStream, in order,
  acknowledged, nothing lost or doubled across outages.
- :mod:`.state`: each host's latest state in a key-value bucket, so a reader can start
  from it instead of from the beginning of the stream.
- :mod:`.tail`: ``procstream tail nats://…``: a durable consumer printed as NDJSON.
- ``procstream fleet``, the stream of every host served as one: :mod:`.feed` (the
  stream in order from a chosen position), :mod:`.intake` (a message as an event of the
  fleet), :mod:`.fleetstate` (every host's state, pure), :mod:`.aggregator` (all of it
  into a hub, hosts up and down), :mod:`.service` (its composition root, beside
  ``serve``'s).

This package may use asyncio and nats-py; nothing below it imports it. Only
:mod:`.service` imports the serving layer.
"""
