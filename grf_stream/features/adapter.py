"""Low-rank adapters (LoRA) for the text encoder: how the text features are tuned to sentiment.

Every linear map W of the encoder's layers (attention query, key, value and output, both
feed-forward maps) gets a trainable update scale * B @ A of rank r, B starting at zero, so an
adapter at the start of training changes nothing. `trainer.text_tune` trains them; the text
extractor folds them into W once at load (`merge`), so a tuned encoder costs exactly what the
plain one does. An adapter file is small (about 1.3 MB for rank 8), unlike a copy of the encoder.
"""

from __future__ import annotations

import torch
from torch import nn

# Where in each encoder layer (a BERT layer of transformers) the adapted linear maps are.
TARGETS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
           "intermediate.dense", "output.dense")


class LowRankAdapter(nn.Module):
    """W x + scale * B (A x): a frozen linear map and its trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        self.A = nn.Parameter(torch.randn(rank, base.in_features) / base.in_features**0.5)  # (r, in)
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))  # (out, r): no change at the start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.A.T @ self.B.T) * self.scale


def _named_targets(encoder: nn.Module):
    for i, layer in enumerate(encoder.encoder.layer):
        for path in TARGETS:
            parent_path, _, name = path.rpartition(".")
            yield f"{i}.{path}", layer.get_submodule(parent_path), name


def attach(encoder: nn.Module, rank: int, alpha: float) -> list[nn.Parameter]:
    """Freeze the encoder and wrap each target in a LowRankAdapter; returns the trainable parameters."""
    encoder.requires_grad_(False)
    trainable = []
    for _, parent, name in _named_targets(encoder):
        adapter = LowRankAdapter(getattr(parent, name), rank, alpha)
        setattr(parent, name, adapter)
        trainable += [adapter.A, adapter.B]
    return trainable


def state(encoder: nn.Module, rank: int, alpha: float) -> dict:
    """What an adapter file holds: the rank, alpha, and each target's A and B."""
    factors = {key: {"A": getattr(parent, name).A.detach().clone(), "B": getattr(parent, name).B.detach().clone()}
               for key, parent, name in _named_targets(encoder)}
    return {"rank": rank, "alpha": alpha, "factors": factors}


def merge(encoder: nn.Module, adapter: dict) -> None:
    """Add a saved adapter's updates to the plain encoder's weights in place (every target, no other)."""
    targets = {key: getattr(parent, name) for key, parent, name in _named_targets(encoder)}
    factors = adapter["factors"]
    if set(factors) != set(targets):
        raise ValueError(f"the adapter does not fit this encoder: it adapts {len(factors)} linear maps, the encoder "
                         f"has {len(targets)} (differing: {sorted(set(targets) ^ set(factors))[:3]})")
    scale = adapter["alpha"] / adapter["rank"]
    with torch.no_grad():
        for key, linear in targets.items():
            linear.weight += (factors[key]["B"] @ factors[key]["A"] * scale).to(linear.weight.dtype)  # (out, in)
