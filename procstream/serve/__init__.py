"""Serving: the HTTP and WebSocket server (``server``), who may use it (``security``),
``/metrics`` (``metrics``), and the composition root of ``procstream serve`` (``service``)."""
