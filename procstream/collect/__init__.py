"""Collecting: the core (tracker, grouper and event builder on one thread, ``core``) and
its two sources, polls (``poll``) and the kernel's process events (``kernel``)."""
