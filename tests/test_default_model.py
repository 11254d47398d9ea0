"""The model the server loads by default: the packaged checkpoint, and how a run becomes it."""

import os

import pytest
import torch

from grf_stream import default_model
from grf_stream.checkpoint import load_model, save_checkpoint
from grf_stream.features import feature_spec
from grf_stream.model import GRF, GRFConfig

EXTRACTORS = feature_spec(("text", "audio", "video"))


def test_the_packaged_model_is_trained_on_cmu_mosi_and_takes_the_extractors_features():
    if not default_model.SHIPPED.exists():
        pytest.fail(f"{default_model.SHIPPED} is missing: the package must ship its default model")
    model, spec, label = default_model.load_serving_model()
    assert "packaged" in label and "UNTRAINED" not in label
    assert spec == EXTRACTORS  # what the server's own extractors produce, so it serves them as they are
    _, _, payload = load_model(default_model.SHIPPED)
    run = payload["run_config"]
    assert run["name"].startswith("mosi_live") and run["data"]["format"] == "store"
    assert payload["training_state"] is None
    paths = (run["data"]["path"], run["data"]["distractors"]["media"], run["output_dir"])
    assert not any(os.path.isabs(path) for path in paths)
    assert payload["metrics"]["mae"] < 1.0  # validation MAE of the epoch kept
    assert default_model.SHIPPED.stat().st_size < 5_000_000
    assert model.config.feature_norm and float(model.encoders["audio"].norm.std.max()) > 10  # raw MFCC scale measured


def test_without_a_packaged_file_the_server_says_its_model_is_untrained(monkeypatch, tmp_path):
    monkeypatch.setattr(default_model, "SHIPPED", tmp_path / "missing.pt")
    model, spec, label = default_model.load_serving_model()
    assert "UNTRAINED" in label and spec == EXTRACTORS
    assert set(model.config.modalities) == {"text", "audio", "video"}


def test_shipping_a_run_drops_training_state_and_makes_paths_relative(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = GRF(GRFConfig(modalities={"text": 4, "audio": 3}, d_model=8, num_layers=1, num_heads=2, d_ffn=16))
    run_config = {"name": "r", "output_dir": str(tmp_path / "runs"), "data": {"path": str(tmp_path / "runs" / "store"), "format": "store"},
                  "optim": {"lr": 0.001}}
    source = tmp_path / "runs" / "r" / "best.pt"
    save_checkpoint(source, model, feature_spec(("text",)), run_config, {"mae": 0.5}, {"optimizer": {"huge": 1}})
    monkeypatch.chdir(tmp_path)
    shipped = default_model.ship(source, tmp_path / "pkg" / "default.pt")
    assert shipped["training_state"] is None
    assert shipped["run_config"]["data"] == {"path": os.path.join("runs", "store"), "format": "store"}
    assert shipped["run_config"]["optim"] == {"lr": 0.001} and shipped["metrics"] == {"mae": 0.5}
    again, _, _ = load_model(tmp_path / "pkg" / "default.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)
