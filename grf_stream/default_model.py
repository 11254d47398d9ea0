"""The model `python -m grf_stream.serve` runs when it is given no checkpoint.

A checkpoint shipped inside the package (`grf_stream/models/default.pt`) when there is one;
otherwise an UNTRAINED GRF over the extractors' features, built from a fixed seed, so that a fresh
install serves end to end. Its predictions carry no meaning, and the server says so when it starts.
"""

from __future__ import annotations

from pathlib import Path

import torch

from grf_stream.checkpoint import load_model
from grf_stream.data.store import FeatureSpec
from grf_stream.features import feature_spec
from grf_stream.model import GRF, GRFConfig

SHIPPED = Path(__file__).parent / "models" / "default.pt"


def untrained_model() -> tuple[GRF, FeatureSpec]:
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
