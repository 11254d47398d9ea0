"""Every shell command of the README runs as a user types it.

Each ```bash block of README.md runs, in order, in one fresh copy of the project (with
`../shared` beside it, as in a checkout), in the environment the tests were started with: none of
tests/conftest.py's settings, so no RAY_AUTH_MODE unless the user has one, and Ray's token
authentication is on wherever Ray turns it on. Within a block, `export` lines carry to the lines
after them, as in one shell. Servers (`python -m grf_stream.serve`, `tensorboard`, the console)
are started, checked to be serving, and stopped with Ctrl-C at the end of their block; a block of
clients with no server of its own gets the quick start's server. A server's output must hold no error-level
line. The few commands that cannot run here are left out by `SKIPPED`, each with its reason, and
every entry of `SKIPPED` must still match a README command.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHARED = ROOT.parent / "shared"

SKIPPED = {  # the start of a command -> why it does not run here
    'pip install -e ".[test]"': "the install itself: CI runs it before the tests (.ci/run); here it would "
                                "point the test environment at the copy",
    "pip install torch==2.13.0 --index-url": "a CUDA build of torch from download.pytorch.org: a GPU machine's install",
    "python -m pytest": "runs this test",
    "python -m trainer.text_tune": "rewrites the shipped text adapter (2 minutes on two cores): "
                                   "tests/trainer/test_text_tune.py runs it on a small label file",
    "python -m trainer.train --config configs/train/mosi_live.yaml": "50 minutes of training on two cores "
                                                                    "(the trainer runs below on synthetic_tiny)",
    "python -m trainer.readout --checkpoint runs/mosi_live/": "needs the run above (tests/trainer/test_readout.py "
                                                            "runs it on a small store)",
    "python -m grf_stream.default_model runs/mosi_live/": "needs the run above",
    "python -m trainer.live_report": "tests/test_readme.py runs it and checks the README's tables against it",
    "python -m trainer.mosi_report": "tests/test_readme.py runs it and checks the README's tables against it",
    "python -m grf_stream.client --webcam --mic": "needs a camera and a microphone (tests/serve/ streams files "
                                                  "through the same capture paths)",
    "python -m grf_stream.extract --labels MMSA/": "needs MMSA's raw CMU-MOSI download",
    "apt-get update && apt-get install -y chromium": "a system install for the browser test: CI runs it before "
                                                     "the tests (.ci/run)",
}
SERVERS = ("python -m grf_stream.serve", "tensorboard ", "python -m grf_stream.console")
UNTIL_INTERRUPTED = {"python -m grf_stream.client --stats": 5.0}  # runs until Ctrl-C: seconds to let it run
# Error-level lines: Ray's C++ log ("[time E pid tid] file.cc:N: ..."), Python logging's ERROR, tracebacks.
ERROR_LINE = re.compile(r"^\[[^\]]* E \d+ \d+\]|\bERROR\b|^Traceback ", re.M)


@dataclass
class Block:
    heading: str
    commands: list[str]

    @property
    def id(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")


def readme_blocks() -> list[Block]:
    """The README's bash blocks, each with the heading it sits under; continued lines joined."""
    blocks, heading = [], ""
    for part in re.split(r"(```bash\n.*?```)", README.read_text(), flags=re.S):
        if part.startswith("```bash"):
            lines = part[len("```bash\n"):-3].replace("\\\n", " ").splitlines()
            blocks.append(Block(heading, [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]))
        else:
            heading = ([h for h in re.findall(r"^#+ (.*)$", part, re.M)] or [heading])[-1]
    return blocks


BLOCKS = readme_blocks()


def runs_here(command: str) -> bool:
    return not command.startswith(tuple(SKIPPED))


# The blocks with something to run; a block of SKIPPED commands only (the installs, pytest itself) is
# not a test case: test_every_skipped_command_is_still_in_the_readme keeps that list honest.
RUN_BLOCKS = [(i, block) for i, block in enumerate(BLOCKS) if any(runs_here(c) for c in block.commands)]


@dataclass
class Running:
    """A server started from a README line: its process and everything it printed."""

    command: str
    process: subprocess.Popen
    output: list[str] = field(default_factory=list)

    def read(self) -> None:
        threading.Thread(target=lambda: self.output.extend(self.process.stdout), daemon=True).start()

    def text(self) -> str:
        return "".join(self.output)


class Shell:
    """Runs README lines in the fresh folder, one block at a time, as one shell would."""

    def __init__(self, folder: Path, environment: dict[str, str]):
        self.folder, self.environment = folder, environment
        self.exports: list[str] = []

    def script(self, command: str) -> str:
        return "\n".join([*self.exports, command])

    def popen(self, command: str) -> subprocess.Popen:
        return subprocess.Popen(["bash", "-c", self.script(f"exec {command}")], cwd=self.folder, env=self.environment,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def run(self, command: str) -> str:
        if command.startswith("export "):
            self.exports.append(command)
            return ""
        for start, seconds in UNTIL_INTERRUPTED.items():
            if command.startswith(start):
                return self.run_until_interrupted(command, seconds)
        result = subprocess.run(["bash", "-c", self.script(command)], cwd=self.folder, env=self.environment,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"`{command}` failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        return result.stdout + result.stderr

    def run_until_interrupted(self, command: str, seconds: float) -> str:
        running = Running(command, self.popen(command))
        running.read()
        time.sleep(seconds)
        interrupt(running)
        assert running.output, f"`{command}` printed nothing in {seconds} s"
        assert not ERROR_LINE.search(running.text()), f"`{command}` on Ctrl-C:\n{running.text()}"
        return running.text()

    def start(self, command: str) -> Running:
        running = Running(command, self.popen(command))
        running.read()
        wait_until_serving(running)
        return running


def wait_until_serving(running: Running, timeout_s: float = 180) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if running.process.poll() is not None:
            pytest.fail(f"`{running.command}` exited ({running.process.returncode}):\n{running.text()}")
        if serving(running):
            return
        time.sleep(0.5)
    interrupt(running)
    pytest.fail(f"`{running.command}` was not serving after {timeout_s} s:\n{running.text()}")


WEB_PORTS = {"tensorboard": 6006, "python -m grf_stream.console": 8765}  # the default port of each web server


def serving(running: Running) -> bool:
    web = next((start for start in WEB_PORTS if running.command.startswith(start)), None)
    if web is None:
        return "grf-stream serving" in running.text()
    port = re.search(r"--port (\d+)", running.command)
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port.group(1) if port else WEB_PORTS[web]}/",
                                      timeout=2).status == 200
    except OSError:
        return False


def interrupt(running: Running) -> None:
    """Ctrl-C, as a user stops it; killed if it does not stop within a minute."""
    running.process.send_signal(signal.SIGINT)
    try:
        running.process.wait(60)
    except subprocess.TimeoutExpired:
        running.process.kill()
        pytest.fail(f"`{running.command}` did not stop on Ctrl-C:\n{running.text()}")
    time.sleep(0.5)  # the reader thread takes the last lines


@pytest.fixture(scope="module")
def shell(tmp_path_factory, user_environment) -> Shell:
    """A fresh copy of the project, `../shared` beside it, and the user's environment."""
    parent = tmp_path_factory.mktemp("fresh")
    folder = parent / ROOT.name
    shutil.copytree(ROOT, folder, ignore=shutil.ignore_patterns(".git", "runs", "data", "keys", "stores", "__pycache__",
                                                                 "*.egg-info", ".pytest_cache", ".hypothesis"))
    if SHARED.is_dir():
        (parent / "shared").symlink_to(SHARED)
    return Shell(folder, user_environment)


def test_every_skipped_command_is_still_in_the_readme():
    commands = [c for block in BLOCKS for c in block.commands]
    stale = [start for start in SKIPPED if not any(c.startswith(start) for c in commands)]
    assert not stale, f"SKIPPED names commands the README no longer has: {stale}"


def block_case(i: int, block: Block):
    """A block as a test case; one that reads ../shared skips where this machine has no ../shared."""
    needs_shared = any("../shared/" in c for c in block.commands if runs_here(c))
    return pytest.param(block, id=f"{i:02d}-{block.id}", marks=pytest.mark.skipif(
        needs_shared and not SHARED.is_dir(), reason=f"needs {SHARED} (the project's real data), which this "
                                                     "machine does not have"))


@pytest.mark.parametrize("block", [block_case(i, b) for i, b in RUN_BLOCKS])
def test_readme_block_runs_as_written(block, shell):
    to_run = [c for c in block.commands if runs_here(c)]
    shell.exports = []
    servers: list[Running] = []
    needs_server = any(c.startswith("python -m grf_stream.client") for c in to_run)
    if needs_server and not any(c.startswith(SERVERS[0]) for c in to_run):
        servers.append(shell.start(quick_start_server()))
    try:
        for command in to_run:
            if command.startswith(SERVERS):
                servers.append(shell.start(command))
            else:
                output = shell.run(command)
                if command.startswith("python -m grf_stream.client"):
                    assert " sentiment " in output or "sessions" in output, f"`{command}` printed:\n{output}"
    finally:
        for running in servers:
            interrupt(running)
        if any(c.startswith("ray start") for c in to_run):
            shell.run("ray stop")  # also when a line after `ray start` failed: no cluster is left behind
    for running in servers:
        errors = [line for line in running.output if ERROR_LINE.search(line)]
        assert not errors, f"`{running.command}` printed error-level lines:\n{''.join(errors)}"


def quick_start_server() -> str:
    return next(c for block in BLOCKS for c in block.commands if c.startswith(SERVERS[0]))
