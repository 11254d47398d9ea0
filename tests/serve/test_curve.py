"""CURVE: with an allow-list, only clients holding an allowed key get answers."""

import pytest
import zmq

from grf_stream.client import use_curve
from grf_stream.keys import make_keys
from grf_stream.serving import protocol as p


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    make_keys(directory, "server", ["allowed"])
    make_keys(directory / "other", "unused", ["stranger"])  # a key pair the server never heard of
    return directory


@pytest.fixture(scope="module")
def server(keys, start_server):
    with start_server(f"curve_server_key={keys / 'server.key_secret'}",
                      f"curve_clients_dir={keys / 'clients'}") as address:
        yield address


def say_hello(server, curve=None, wait_s=3.0):
    """The reply to a hello, or None when nothing comes back within wait_s."""
    with zmq.Context() as context:
        socket = context.socket(zmq.DEALER)
        socket.linger = 0
        if curve is not None:
            use_curve(socket, *curve)
        socket.connect(server)
        socket.send(p.encode(p.Hello("curve-test", 0, 0.0, ["text"], "window")))
        answered = socket.poll(int(wait_s * 1000))
        reply = p.decode_reply(socket.recv()) if answered else None
        socket.close()
        return reply


def test_allowed_client_is_welcomed(server, keys):
    reply = say_hello(server, (keys / "allowed.key_secret", keys / "server.key"), wait_s=30)
    assert isinstance(reply, p.Welcome)


def test_a_client_without_an_allowed_key_gets_nothing(server, keys):
    assert say_hello(server, (keys / "other" / "stranger.key_secret", keys / "server.key")) is None
    assert say_hello(server) is None  # no encryption at all
