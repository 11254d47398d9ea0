"""Checkpoints: the weights, the resolved config and the feature spec, in one file.

Serving needs nothing else to rebuild the model: `load_model(path)` returns it with its spec.
Training state (optimizer, scheduler, progress) rides along in the file a run resumes from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from grf_stream.config import from_dict, to_dict
from grf_stream.model import GRF, GRFConfig
from grf_stream.spec import FeatureSpec

FORMAT, VERSION = "grf-stream-checkpoint", 1


def save_checkpoint(
    path: str | Path,
    model: GRF,
    spec: FeatureSpec,
    run_config: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    training_state: dict[str, Any] | None = None,
) -> None:
    """Write atomically: a crash mid-save never leaves a truncated checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": to_dict(model.config),
        "feature_spec": spec.to_dict(),
        "model_state": model.state_dict(),
        "run_config": run_config or {},
        "metrics": metrics or {},
        "training_state": training_state,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: give the path of a .pt file a training run wrote")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a grf-stream checkpoint (no format tag {FORMAT!r})")
    if payload["version"] != VERSION:
        raise ValueError(f"{path} is checkpoint version {payload['version']}; this grf-stream reads {VERSION}")
    return payload


def load_model(path: str | Path, device: str | torch.device = "cpu",
               gate_floors: dict[str, float] | None = None) -> tuple[GRF, FeatureSpec, dict[str, Any]]:
    """(model in eval mode, its feature spec, the whole checkpoint) from a checkpoint file; `gate_floors`
    replace the checkpoint's per-modality floors of (6') (a floor holds no weight)."""
    payload = read_checkpoint(path)
    config = dict(payload["model_config"])
    if gate_floors is not None:
        config["gate_floors"] = gate_floors
    model = GRF(from_dict(GRFConfig, config))
    model.load_state_dict(payload["model_state"])
    spec = FeatureSpec.from_dict(payload["feature_spec"])
    return model.to(device).eval(), spec, payload
