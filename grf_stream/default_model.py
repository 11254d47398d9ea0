"""The model `python -m grf_stream.serve` runs when it is given no checkpoint.

The checkpoint shipped inside the package (`grf_stream/models/default.pt`, trained by
configs/train/mosi_live.yaml, then given the text read-out of `python -m trainer.readout`);
without it (a source tree where it was deleted) an UNTRAINED GRF over the extractors' features,
built from a fixed seed, so that the server still runs end to end.
Its predictions carry no meaning, and the server says so when it starts.

A training run's best checkpoint becomes the shipped one with

    python -m grf_stream.default_model runs/mosi_live/checkpoints/readout.pt

which drops what only training needs and writes the run's paths relative to the project, so the
file says where its data came from without naming this machine's folders.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from grf_stream.checkpoint import load_model, read_checkpoint, save_checkpoint
from grf_stream.model import GRF, GRFConfig
from grf_stream.spec import FeatureSpec

SHIPPED = Path(__file__).parent / "models" / "default.pt"


def untrained_model() -> tuple[GRF, FeatureSpec]:
    from grf_stream.features import feature_spec  # the extractors' libraries; the packaged model needs none

    spec = feature_spec(("text", "audio", "video"))
    torch.manual_seed(0)
    config = GRFConfig(modalities=spec.sizes(), order=["text", "audio", "video"], dropout=0.0)
    return GRF(config).eval(), spec


def load_serving_model(checkpoint: str | Path | None = None) -> tuple[GRF, FeatureSpec, str]:
    """(model, its feature spec, a label saying what it is) for the server."""
    if checkpoint is not None:
        model, spec, _ = load_model(checkpoint)
        return model, spec, f"checkpoint {checkpoint}"
    if SHIPPED.exists():
        model, spec, _ = load_model(SHIPPED)
        return model, spec, f"the packaged model {SHIPPED.name}"
    model, spec = untrained_model()
    return model, spec, "an UNTRAINED placeholder model (predictions are meaningless; pass --checkpoint)"


def ship(checkpoint: str | Path, destination: Path = SHIPPED) -> dict:
    """Copy a run's checkpoint to `destination` for serving; returns what was written."""
    model, spec, payload = load_model(checkpoint)
    run_config = _relative_paths(payload.get("run_config") or {}, Path.cwd())
    save_checkpoint(destination, model, spec, run_config, payload.get("metrics"))  # no training state
    return read_checkpoint(destination)


def _relative_paths(value, root: Path):
    """Every absolute path inside the run config, relative to `root` (the project folder)."""
    if isinstance(value, dict):
        return {k: _relative_paths(v, root) for k, v in value.items()}
    if isinstance(value, str) and os.path.isabs(value):
        return os.path.relpath(value, root)
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m grf_stream.default_model",
                                     description="Make a run's checkpoint the model the server loads by default.")
    parser.add_argument("checkpoint", help="e.g. runs/mosi_live/checkpoints/readout.pt")
    args = parser.parse_args(argv)
    payload = ship(args.checkpoint)
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in payload["metrics"].items() if isinstance(v, float))
    print(f"{SHIPPED} ({SHIPPED.stat().st_size / 1e6:.1f} MB) from {args.checkpoint}: {metrics}")


if __name__ == "__main__":
    main()
