"""Ridge regression on mean-pooled features: the floor a sentiment model must beat.

Closed form, numpy only. The penalty is chosen from a grid by validation MAE (the intercept is not
penalised), so the floor is as high as a linear model on these features honestly gets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from grf_stream.data.samples import Sample

ALPHAS = (0.01, 0.1, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)


def mean_pooled(samples: list[Sample], modality: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, d) the mean of each sample's real rows of one modality, (N,) labels."""
    rows = [s.features[modality][s.masks[modality]] for s in samples]
    empty = [s.id for s, r in zip(samples, rows) if not len(r)]
    if empty:
        raise ValueError(f"{len(empty)} samples have no {modality} rows to pool (e.g. {empty[0]})")
    return np.stack([r.mean(axis=0) for r in rows]).astype(np.float64), np.array([s.label for s in samples])


@dataclass
class Ridge:
    """y = (x - mean) w + b."""

    mean: np.ndarray
    weights: np.ndarray
    bias: float
    alpha: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, alpha: float) -> "Ridge":
        mean = x.mean(axis=0)
        centred = x - mean
        weights = np.linalg.solve(centred.T @ centred + alpha * np.eye(x.shape[1]), centred.T @ (y - y.mean()))
        return cls(mean, weights, float(y.mean()), alpha)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) @ self.weights + self.bias


def fit_on_validation(train: tuple[np.ndarray, np.ndarray], valid: tuple[np.ndarray, np.ndarray],
                      alphas=ALPHAS) -> Ridge:
    """The ridge of the grid's alpha with the lowest validation MAE, fitted on the training set."""
    fits = [Ridge.fit(*train, alpha) for alpha in alphas]
    return min(fits, key=lambda r: float(np.mean(np.abs(r.predict(valid[0]) - valid[1]))))
