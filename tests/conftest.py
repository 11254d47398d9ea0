"""Shared test setup: one Ray configuration for every Ray process the tests start."""

import os

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
