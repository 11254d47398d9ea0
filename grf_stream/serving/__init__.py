"""Serving: the wire protocol, the sessions, the front-end and the fusion engine; no sockets, no Ray.

    protocol.py   messages and their bytes: the one place where the wire is read and written
    session.py    one client stream: its window policy, held rows, copy of the context, budget
    frontend.py   messages in, chunks to extraction, rows to steps by the window policy, replies out
    batcher.py    the steps of every session, batched per fusion shard
    engine.py     FusionService: every session's context, steps batched across sessions

`grf_stream/serve.py` puts a ZeroMQ socket and Ray actors (`actors/`) around them; tests drive
them directly.
"""
