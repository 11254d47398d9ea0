"""One in-memory form for every dataset format, and its batching."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset


@dataclass
class Sample:
    """One labelled segment: per modality features (T_m, d_m) and a mask (T_m,), True = real step."""

    id: str
    label: float
    features: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]


class SentimentDataset(Dataset):
    def __init__(self, samples: list[Sample]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


@dataclass
class Batch:
    features: dict[str, torch.Tensor]  # name -> (B, T, d) float32, padded
    masks: dict[str, torch.Tensor]  # name -> (B, T) bool
    labels: torch.Tensor  # (B,)
    ids: list[str]

    def to(self, device) -> "Batch":
        move = lambda d: {k: v.to(device, non_blocking=True) for k, v in d.items()}  # noqa: E731
        return Batch(move(self.features), move(self.masks), self.labels.to(device), self.ids)


def pad(features: list[np.ndarray], masks: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences (T_i, d) with their masks -> (B, T, d) float32 and (B, T) bool, padded and masked."""
    steps = max(len(x) for x in features)
    padded = np.zeros((len(features), steps, features[0].shape[1]), np.float32)
    padded_mask = np.zeros((len(features), steps), bool)
    for i, (x, mask) in enumerate(zip(features, masks)):
        padded[i, : len(x)], padded_mask[i, : len(x)] = x, mask
    return torch.from_numpy(padded), torch.from_numpy(padded_mask)


def collate(samples: list[Sample]) -> Batch:
    """Pad every modality to the longest sequence of the batch; padding is masked."""
    features, masks = {}, {}
    for m in samples[0].features:
        features[m], masks[m] = pad([s.features[m] for s in samples], [s.masks[m] for s in samples])
    labels = torch.tensor([s.label for s in samples], dtype=torch.float32)
    return Batch(features, masks, labels, [s.id for s in samples])


def real_rows(x: np.ndarray) -> np.ndarray:
    """(..., T, d) -> (..., T) bool: True where a row holds any non-zero value. A row of zeros is a step
    without data (the extractors' masked rows, a dataset's padding), wherever features are read back."""
    return x.any(axis=-1)


def no_data(size: int) -> tuple[np.ndarray, np.ndarray]:
    """A modality without data: one zero step, masked (features (1, size), mask (1,))."""
    return np.zeros((1, size), np.float32), np.zeros(1, bool)


def with_absent(samples: list[Sample], sizes: dict[str, int]) -> list[Sample]:
    """Every sample with each of `sizes`' modalities it lacks as `no_data`."""
    def filled(s: Sample) -> Sample:
        features, masks = dict(s.features), dict(s.masks)
        for m in sizes:
            if m not in features:
                features[m], masks[m] = no_data(sizes[m])
        return Sample(s.id, s.label, features, masks)
    return [filled(s) for s in samples]


def check_sizes(samples: list[Sample], sizes: dict[str, int], source: str) -> None:
    """The data's feature sizes must be the model's; say which override fixes a mismatch."""
    if not samples:
        raise ValueError(f"{source} has no samples")
    for m, size in sizes.items():
        if m not in samples[0].features:
            raise ValueError(f"{source} has no modality {m!r} (it has {sorted(samples[0].features)}): "
                             f"fix model.modalities")
        got = samples[0].features[m].shape[1]
        if got != size:
            raise ValueError(f"{source}: {m} features have size {got} but model.modalities.{m} is {size}: "
                             f"set model.modalities.{m}={got}")
