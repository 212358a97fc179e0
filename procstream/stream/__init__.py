"""Streaming the core's events: the wire protocol (``protocol``), numbering, state and
resume (``hub``), the WebSocket fan-out (``fanout``), the NDJSON event log (``eventlog``),
and the sink that feeds hub and log (``sink``)."""
