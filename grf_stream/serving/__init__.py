"""Serving: the wire protocol, the sessions, the front-end and the fusion engine; no sockets, no Ray.

    protocol.py    messages and their bytes: the one place where the wire is read and written
    modalities.py  the raw modalities, a row each (message, chunk, keep rule, help); `register` adds one
    session.py     one client stream: its held rows, waiting chunks, bounds
    policy.py      a session's messages to fusion steps by its window policy (grf_stream/windows.py)
    frontend.py    the session table: messages in and routed, sessions opened and closed
    replies.py     predictions and errors out (an error budget per connection); numbers.py the live numbers
    batcher.py     the steps of every session, batched per fusion shard
    engine.py      FusionService: every session's context, steps batched across sessions; SeededFusion:
                   the front-end's copy of each session's state, to seed a shard that lost them
    channel.py     the data plane: FusionService calls over TCP

`grf_stream/serve.py` puts a ZeroMQ socket and Ray actors (`actors/`) around them; tests drive
them directly.
"""
