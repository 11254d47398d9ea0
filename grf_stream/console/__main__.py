"""`python -m grf_stream.console`: a live console in the browser for a grf-stream server.

    python -m grf_stream.serve                 # in one terminal
    python -m grf_stream.console               # in another; then open http://127.0.0.1:8765/
    python -m grf_stream.console --server tcp://10.0.0.5:5555 --port 9000

The page streams the webcam (JPEG frames), the microphone (PCM16 at 16 kHz) and each line typed in
its text box (a transcript phrase), and plots the sentiment after every step, the step's gate,
what the context holds, and the server's error and drop counts.
"""

from __future__ import annotations

import argparse

from aiohttp import web

from grf_stream.console.gateway import ConsoleConfig, build_app


def main(argv: list[str] | None = None) -> None:
    defaults = ConsoleConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=defaults.server, help="the grf-stream server to stream to")
    parser.add_argument("--host", default=defaults.host,
                        help="interface to bind (default: this machine only; browsers give a camera only to "
                             "http://127.0.0.1 or localhost, or to https)")
    parser.add_argument("--port", type=int, default=defaults.port)
    args = parser.parse_args(argv)
    config = ConsoleConfig(server=args.server, host=args.host, port=args.port)
    print(f"grf-stream console on http://{config.host}:{config.port}/ streaming to {config.server}", flush=True)
    web.run_app(build_app(config), host=config.host, port=config.port, print=None)


if __name__ == "__main__":
    main()
