"""The console's web side: one page, and a WebSocket per open page relayed to the grf-stream server.

The relay carries the server's msgpack protocol unchanged (grf_stream/serving/protocol.py): each
binary WebSocket message is one protocol message, sent as it is on a ZeroMQ DEALER socket of its
own (what `python -m grf_stream.client` uses), and each reply goes back as one binary message. So
the page speaks exactly what every other client speaks, and the server sees one more client.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.asyncio
from aiohttp import WSCloseCode, WSMsgType, web

PAGE = Path(__file__).parent / "page"  # index.html and the scripts it loads; nothing comes from elsewhere


@dataclass
class ConsoleConfig:
    """Everything `python -m grf_stream.console` can be told."""

    server: str = "tcp://127.0.0.1:5555"
    """The grf-stream server (`python -m grf_stream.serve`) to relay to."""
    host: str = "127.0.0.1"
    """Interface to bind: 127.0.0.1 keeps the console (and the camera it streams) local."""
    port: int = 8765
    max_message_bytes: int = 64 * 1024 * 1024
    """A larger WebSocket message closes the page's connection; the server's own transport cap."""


def build_app(config: ConsoleConfig) -> web.Application:
    app = web.Application()
    app["config"] = config
    app["zmq"] = zmq.asyncio.Context()
    app["pages"] = weakref.WeakSet()  # open WebSockets, closed on shutdown
    app.router.add_get("/", index)
    app.router.add_get("/ws", relay)
    app.router.add_static("/page/", PAGE)
    app.on_shutdown.append(close_pages)
    app.on_cleanup.append(close_zmq)
    return app


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(PAGE / "index.html")


async def close_pages(app: web.Application) -> None:
    """Ctrl-C: an open page would otherwise hold the console for aiohttp's whole shutdown timeout."""
    for page in list(app["pages"]):
        await page.close(code=WSCloseCode.GOING_AWAY, message=b"the console is stopping")


async def close_zmq(app: web.Application) -> None:
    app["zmq"].term()


def same_origin(request: web.Request) -> bool:
    """A WebSocket is not bound by the browser's same-origin rule: without this check any web site
    the user visits could open one to this console and stream from the user's session."""
    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc == request.host


async def relay(request: web.Request) -> web.WebSocketResponse:
    """One page's WebSocket <-> one DEALER socket to the server, until either side goes."""
    if not same_origin(request):
        raise web.HTTPForbidden(text=f"origin {request.headers['Origin']!r} is not this console's: open the page "
                                     f"from http://{request.host}/")
    config: ConsoleConfig = request.app["config"]
    page = web.WebSocketResponse(max_msg_size=config.max_message_bytes)
    await page.prepare(request)
    request.app["pages"].add(page)
    server = request.app["zmq"].socket(zmq.DEALER)
    server.setsockopt(zmq.LINGER, 0)
    server.connect(config.server)
    replies = asyncio.create_task(send_replies(server, page))
    try:
        async for message in page:
            if message.type == WSMsgType.BINARY:
                await server.send(message.data)
            elif message.type == WSMsgType.TEXT:
                await page.close(code=WSCloseCode.UNSUPPORTED_DATA,
                                 message=b"send each protocol message as one binary msgpack message")
    finally:
        replies.cancel()
        server.close()
    return page


async def send_replies(server: zmq.asyncio.Socket, page: web.WebSocketResponse) -> None:
    try:
        while not page.closed:
            await page.send_bytes(await server.recv())
    except ConnectionResetError:  # the page went away between a reply's arrival and its sending
        pass
