"""The README's Python example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    assert namespace["y"].shape == (2,)
    assert namespace["out"].gates.shape == (2, 2, 64)


SHARED = README.parents[1] / "shared" / "data"


def test_readme_default_model_tables_are_what_their_commands_measure(tmp_path):
    """Rebuild the text store as the README says, run `python -m trainer.mosi_report` and
    `python -m trainer.live_report`, and find every measured row of the README's two tables in
    their output, number for number."""
    import pytest

    labels = SHARED / "mosi" / "mosi_labels_transcripts.csv"
    if not labels.exists():
        pytest.skip("needs ../shared/data (the CMU-MOSI labels and transcripts, and the media)")
    import os
    import subprocess
    import sys

    root, store = README.parent, tmp_path / "mosi_text"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    subprocess.run([sys.executable, "-m", "grf_stream.extract", "--labels", str(labels), "--out", str(store),
                    "--modalities", "text"], cwd=root, env=env, check=True, capture_output=True, timeout=600)
    report = subprocess.run([sys.executable, "-m", "trainer.mosi_report", "--store", str(store),
                             "--media", str(SHARED / "media")], cwd=root, env=env, check=True, capture_output=True,
                            text=True, timeout=600).stdout
    live = subprocess.run([sys.executable, "-m", "trainer.live_report", "--store", str(store),
                           "--media", str(SHARED / "media")], cwd=root, env=env, check=True, capture_output=True,
                          text=True, timeout=600).stdout
    rows = [line for line in (report + live).splitlines() if line.startswith("| ") and " split" not in line]
    measured = [row for row in rows if "published" not in row]
    assert len(measured) == 6 + 3, report + live
    for row in measured:
        assert row in README.read_text(), f"the README's table lacks this measured row:\n{row}"
