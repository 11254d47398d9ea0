"""Stopping the server (Ctrl-C) tells every open session so, instead of leaving it in silence."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import zmq

from grf_stream.serving import protocol as p

ROOT = Path(__file__).resolve().parents[2]


def test_ctrl_c_closes_every_open_session_with_server_shutdown():
    with zmq.Context() as context:
        probe = context.socket(zmq.ROUTER)
        port = probe.bind_to_random_port("tcp://127.0.0.1")
        probe.close()
        server = subprocess.Popen([sys.executable, "-m", "grf_stream.serve", f"port={port}", "warm=false"], cwd=ROOT,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.time() + 120
            while "grf-stream serving" not in server.stdout.readline():
                assert server.poll() is None and time.time() < deadline, "the server did not start"
            sock = context.socket(zmq.DEALER)
            sock.linger = 0
            sock.connect(f"tcp://127.0.0.1:{port}")
            sock.send(p.encode(p.Hello("leaving", 0, 0.0, ["text"], "window")))
            sock.send(p.encode(p.Text("leaving", 1, 0.1, "what a lovely day", True)))
            replies = [p.decode_reply(sock.recv()) for _ in range(2) if sock.poll(60_000)]
            server.send_signal(signal.SIGINT)
            replies += [p.decode_reply(sock.recv())] if sock.poll(30_000) else []
            sock.close()
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(60)
    assert [type(r) for r in replies] == [p.Welcome, p.Prediction, p.Closed], replies
    assert replies[-1].reason == "server_shutdown" and replies[-1].stats["steps"] == 1
