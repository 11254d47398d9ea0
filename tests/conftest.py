"""Shared test setup: one Ray configuration for every Ray process the tests start, and a real server
for the tests that talk to one."""

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

# The environment as the tests were started, before the settings below: what a user's shell has.
# tests/test_readme_commands.py runs the README's commands in it.
USER_ENVIRONMENT = dict(os.environ)

# One auth mode for in-process Ray, `ray start` and `ray job submit` alike (Ray 2.60 otherwise
# writes a token on first start that later processes may disagree with), and every port on
# 127.0.0.1.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402  (after the environment Ray reads at import)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for one test module, never a leftover `ray start` cluster; shut down after the module."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def user_environment() -> dict[str, str]:
    """The environment without this file's test-only settings (no RAY_AUTH_MODE unless the user set one)."""
    return dict(USER_ENVIRONMENT)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(*overrides: str, ready_within_s: float = 120):
    """`python -m grf_stream.serve` as a user starts it, on a free port; yields its address once it
    serves; stopped (SIGTERM) at the end."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "grf_stream.serve", f"port={port}", *overrides],
                               cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log, deadline = [], time.time() + ready_within_s
    try:
        while "grf-stream serving" not in (log[-1] if log else ""):
            if process.poll() is not None or time.time() > deadline:
                pytest.fail("the server did not start:\n" + "".join(log))
            log.append(process.stdout.readline())
        yield f"tcp://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
def start_server():
    """`with start_server("idle_timeout_s=20") as address:` runs a real server for the block."""
    return running_server
