"""`ray job submit` against a real local head, as the README shows it."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from grf_stream.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the ray CLI of this environment
DASHBOARD_PORT = 8299  # not the default 8265, which a local ray.init() elsewhere may hold
DASHBOARD = f"http://127.0.0.1:{DASHBOARD_PORT}"


def ray_cli(*args, timeout=180, env=None):
    return subprocess.run([str(BIN / "ray"), *args], cwd=ROOT, env=env, timeout=timeout,
                          capture_output=True, text=True)


@pytest.fixture
def head():
    """A Ray head started as a user would, stopped afterwards whatever happens."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    started = ray_cli("start", "--head", "--port=6390", "--dashboard-host=127.0.0.1", f"--dashboard-port={DASHBOARD_PORT}",
                      "--num-cpus=2", "--include-dashboard=true", env=env)
    assert started.returncode == 0, started.stdout + started.stderr
    yield env
    ray_cli("stop", "--force", env=env)


def submit(*command, env):
    """`ray job submit`, again while the head's job agent is still starting (it answers 500 then)."""
    for _ in range(30):
        submitted = ray_cli("job", "submit", "--address", DASHBOARD, "--working-dir", ".", "--", *command,
                            env=env, timeout=600)
        log = submitted.stdout + submitted.stderr
        if "No available agent" not in log:
            return submitted, log
        time.sleep(2)
    return submitted, log


def test_ray_job_submit_trains_and_writes_checkpoint_and_events(head, tmp_path):
    submitted, log = submit(
        "python", "-m", "trainer.train", "--config", "configs/train/synthetic_tiny.yaml",
        f"output_dir={tmp_path}", "train.epochs=2", env=head,
    )
    assert submitted.returncode == 0, log
    job_id = re.search(r"raysubmit_\w+", log).group(0)
    assert JobSubmissionClient(DASHBOARD).get_job_status(job_id) == JobStatus.SUCCEEDED
    model, spec, _ = load_model(tmp_path / "synthetic_tiny" / "checkpoints" / "best.pt")
    assert spec.sizes() == model.config.modalities
    events = EventAccumulator(str(tmp_path / "synthetic_tiny" / "tensorboard")).Reload()
    assert len(events.Scalars("mae/valid")) == 2
