"""Multimodal-sentiment metrics as the field reports them, all from one regression output.

Labels and predictions are continuous sentiment in [-3, 3] (CMU-MOSI / MOSEI).

- MAE, and Pearson correlation (Corr).
- Acc-7 / Acc-5: clip to [-3, 3] / [-2, 2], round to the nearest integer, compare classes.
- Acc-2 and weighted F1, two conventions:
  - "has-0": every sample; negative (< 0) against non-negative (>= 0).
  - "non-0": zero labels left out; positive (> 0) against negative, as MulT reports.
"""

from __future__ import annotations

import numpy as np

METRIC_NAMES = ("mae", "corr", "acc7", "acc5", "acc2_has0", "f1_has0", "acc2_non0", "f1_non0")


def weighted_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    """F1 of each class weighted by its support (scikit-learn's average='weighted')."""
    total = 0.0
    for cls in np.unique(truth):
        tp = np.sum((predicted == cls) & (truth == cls))
        precision_den, recall_den = np.sum(predicted == cls), np.sum(truth == cls)
        f1 = 2 * tp / (precision_den + recall_den) if precision_den + recall_den else 0.0
        total += f1 * recall_den
    return float(total / len(truth)) if len(truth) else float("nan")


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 0 where either side is constant (it is undefined there)."""
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def class_accuracy(predictions: np.ndarray, labels: np.ndarray, bound: float) -> float:
    clipped = lambda x: np.round(np.clip(x, -bound, bound))  # noqa: E731
    return float(np.mean(clipped(predictions) == clipped(labels)))


def sentiment_metrics(predictions, labels) -> dict[str, float]:
    """Every metric of the module docstring, as a dict keyed by METRIC_NAMES."""
    p = np.asarray(predictions, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"{p.size} predictions for {y.size} labels: need the same, non-zero number")
    if not (np.isfinite(p).all() and np.isfinite(y).all()):
        raise ValueError(f"{int((~np.isfinite(p)).sum())} predictions and {int((~np.isfinite(y)).sum())} labels are "
                         "NaN or inf: metrics over them would mean nothing; find where they come from")
    non_zero = y != 0
    return {
        "mae": float(np.mean(np.abs(p - y))),
        "corr": pearson(p, y),
        "acc7": class_accuracy(p, y, 3.0),
        "acc5": class_accuracy(p, y, 2.0),
        "acc2_has0": float(np.mean((p >= 0) == (y >= 0))),
        "f1_has0": weighted_f1(y >= 0, p >= 0),
        "acc2_non0": float(np.mean((p[non_zero] > 0) == (y[non_zero] > 0))) if non_zero.any() else float("nan"),
        "f1_non0": weighted_f1(y[non_zero] > 0, p[non_zero] > 0) if non_zero.any() else float("nan"),
    }


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A text table: one row per name (e.g. split or fusion order), one column per metric."""
    header = f"{'':<24}" + "".join(f"{m:>11}" for m in METRIC_NAMES)
    lines = [header]
    for name, metrics in rows.items():
        lines.append(f"{name:<24}" + "".join(f"{metrics[m]:>11.4f}" for m in METRIC_NAMES))
    return "\n".join(lines)
