"""A fourth modality, added as a user adds one (tests/serve/pulse_modality.py: its extractor and its
row, registered), streamed end to end through the real server beside the built-in three."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from grf_stream.checkpoint import save_checkpoint
from grf_stream.model import GRF, GRFConfig
from grf_stream.serving import protocol as p
from grf_stream.serving.engine import FusionService, StepRequest
from grf_stream.windows import cut, window_rows

from test_serve_end_to_end import send_and_collect

PLUGIN = "tests.serve.pulse_modality"
ROOT = Path(__file__).resolve().parents[2]  # where the server runs, and imports the plugin from


@pytest.fixture(scope="module")
def plugin():
    sys.path.insert(0, str(ROOT))  # where the server imports it from: its working directory
    try:
        yield importlib.import_module(PLUGIN)
    finally:
        sys.path.remove(str(ROOT))


@pytest.fixture(scope="module")
def pulse_model(plugin, tmp_path_factory):
    """A GRF over text, audio, video and the pulse, as a checkpoint the server loads."""
    from grf_stream.features import feature_spec

    spec = feature_spec(["text", "audio", "video", "pulse"])
    torch.manual_seed(0)
    model = GRF(GRFConfig(modalities=spec.sizes(), d_model=32, num_heads=2, d_ffn=64, dropout=0.0,
                          init="learned", gfu="keep")).eval()
    path = tmp_path_factory.mktemp("pulse") / "pulse.pt"
    save_checkpoint(path, model, spec)
    return model, path


@pytest.fixture(scope="module")
def pulse_server(pulse_model, start_server):
    with start_server(f"checkpoint={pulse_model[1]}", f"plugins=[{PLUGIN}]") as address:
        yield address


def test_a_pulse_streams_through_the_real_server_window_by_window(plugin, pulse_model, pulse_server):
    model, _ = pulse_model
    rng = np.random.default_rng(0)
    samples = np.column_stack([70 + rng.normal(0, 5, 22), 5 + rng.normal(0, 1, 22)]).astype(np.float32)
    chunks = [samples[i:i + 3] for i in range(0, 22, 3)]  # 0.75 s a chunk: windows end inside chunks
    sent = [p.Hello("wrist", 0, 0.0, ["pulse", "text"], "window", window_s=1.0)]
    sent += [p.Signal("wrist", 1 + i, i * 0.75, "pulse", chunk, 4.0) for i, chunk in enumerate(chunks)]
    sent += [p.Signal("wrist", 20, 6.0, "pulse", samples[:2, :1].copy(), 4.0),  # one column: refused
             p.Signal("wrist", 21, 6.1, "heartbeat", samples[:2], 4.0),  # not served
             p.Text("wrist", 22, 6.2, "I feel great"), p.Bye("wrist", 23, 6.3)]
    replies = send_and_collect(pulse_server, sent, replies_wanted=1 + 7 + 2 + 1)

    welcome = next(r for r in replies if isinstance(r, p.Welcome))  # refusals may come before it
    rest = [r for r in replies if r is not welcome]
    assert "pulse" in welcome.modalities and welcome.feature_spec["pulse"]["extractor"] == "pulse-eda"
    predictions = [r for r in rest if isinstance(r, p.Prediction)]
    errors = {r.seq: r for r in rest if isinstance(r, p.Error)}
    # 22 samples: five whole 1 s windows as they fill, the phrase, then bye fuses the last two samples
    assert [r.modality for r in predictions] == ["pulse"] * 5 + ["text", "pulse"]
    assert predictions[5].modalities == ["pulse", "text"]
    assert errors[20].code == p.BAD_FIELD and "two columns" in errors[20].message
    assert errors[21].code == p.UNKNOWN_MODALITY and "pulse" in errors[21].message
    assert isinstance(rest[-1], p.Closed) and rest[-1].reason == "bye"

    rows, mask = plugin.PulseExtractor().extract_all(plugin.SignalChunk(samples, 4.0))
    service = FusionService(model)
    service.open("alone")
    expected = [service.step([StepRequest("alone", 0, "pulse", rows[w], mask[w])])[0].value
                for w in cut(len(rows), window_rows(1.0, 4.0), ended=False)]
    assert [r.value for r in predictions[:5]] == pytest.approx(expected, abs=1e-5)


def test_the_client_sends_a_signal_from_a_csv(pulse_server, tmp_path):
    wrist = tmp_path / "wrist.csv"
    rows = "".join(f"{i / 4:.2f},{70 + i % 5},{5 + i % 3 / 10}\n" for i in range(24))
    wrist.write_text("time,bpm,microsiemens\n" + rows)
    transcript = tmp_path / "talk.csv"
    transcript.write_text("start,end,text\n1.0,2.5,what a lovely day\n")
    result = subprocess.run([sys.executable, "-m", "grf_stream.client", "--server", pulse_server, "--signal",
                             f"pulse={wrist}", "--transcript", str(transcript), "--speed", "20", "--json"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    replies = [json.loads(line) for line in result.stdout.splitlines()]
    fused = [r["modality"] for r in replies if r["type"] == "prediction"]
    assert fused.count("pulse") == 6 and fused.count("text") == 1  # 24 samples at 4 Hz: six 1 s windows


def test_a_signal_csv_without_a_steady_rate_is_refused_saying_so(tmp_path):
    from grf_stream.client import read_signal

    uneven = tmp_path / "uneven.csv"
    uneven.write_text("time,bpm\n0,70\n0.25,71\n2.0,72\n")
    with pytest.raises(SystemExit, match="steady rate"):
        read_signal(uneven)
