"""Readers for the two pickle formats the field publishes CMU-MOSI / CMU-MOSEI features in.

MulT (`mosi_data.pkl`, `mosi_data_noalign.pkl`, `mosei_senti_data[_noalign].pkl`):
    data[split][key], split in train/valid/test; keys `text` (N, 50, 300), `audio` (N, T_a, d_a),
    `vision` (N, T_v, d_v), `labels` (N, 1, 1), `id`. Padding is not marked in these files: a step
    whose features are all zero is taken as padding. Audio may hold -inf, which is set to 0 first
    (as MulT's own loader does).

MMSA (`aligned_50.pkl`, `unaligned_50.pkl`):
    data[split][key]; keys `text` (N, 50, 768) BERT features, `audio`, `vision`, `audio_lengths`,
    `vision_lengths`, `regression_labels` (N,), `id`, `raw_text`, and often `text_bert` (N, 3, 50):
    token ids, attention mask, segment ids. Audio and vision masks come from their lengths; the text
    mask from `text_bert`'s attention mask where present, else from all-zero rows.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from grf_stream.data.samples import Sample, real_rows

MODALITIES = ("text", "audio", "vision")


def read_pickle(path: str | Path, split: str, required: tuple[str, ...]) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist: set data.path to the .pkl file")
    with open(path, "rb") as f:
        data = pickle.load(f)
    if split not in data:
        raise KeyError(f"{path} has no split {split!r}: it has {sorted(data)}")
    part = data[split]
    missing = [k for k in required if k not in part]
    if missing:
        raise KeyError(f"{path} [{split}] lacks key {missing[0]!r}: it has {sorted(part)}; is data.format right?")
    return part


def lengths_to_mask(lengths: np.ndarray, steps: int) -> np.ndarray:
    return np.arange(steps)[None, :] < np.asarray(lengths).reshape(-1, 1)


def sample_ids(ids, n: int) -> list[str]:
    """Ids as strings: MulT stores rows like [video_id, clip_id, ...], MMSA plain strings."""
    if ids is None:
        return [str(i) for i in range(n)]
    out = []
    for row in ids:
        parts = np.asarray(row).reshape(-1)
        out.append("_".join(str(p.decode() if isinstance(p, bytes) else p) for p in parts))
    return out


def to_samples(features: dict, masks: dict, labels: np.ndarray, ids: list[str]) -> list[Sample]:
    return [
        Sample(ids[i], float(labels[i]), {m: features[m][i] for m in features}, {m: masks[m][i] for m in masks})
        for i in range(len(labels))
    ]


def load_mult(path: str | Path, split: str) -> list[Sample]:
    """A split of a MulT pickle; see the module docstring."""
    part = read_pickle(path, split, (*MODALITIES, "labels"))
    features = {m: np.nan_to_num(np.asarray(part[m], dtype=np.float32), neginf=0.0, posinf=0.0) for m in MODALITIES}
    masks = {m: real_rows(x) for m, x in features.items()}
    labels = np.asarray(part["labels"], dtype=np.float32).reshape(-1)
    return to_samples(features, masks, labels, sample_ids(part.get("id"), len(labels)))


def load_mmsa(path: str | Path, split: str) -> list[Sample]:
    """A split of an MMSA pickle; see the module docstring."""
    part = read_pickle(path, split, (*MODALITIES, "audio_lengths", "vision_lengths", "regression_labels"))
    features = {m: np.nan_to_num(np.asarray(part[m], dtype=np.float32), neginf=0.0, posinf=0.0) for m in MODALITIES}
    masks = {
        "audio": lengths_to_mask(part["audio_lengths"], features["audio"].shape[1]),
        "vision": lengths_to_mask(part["vision_lengths"], features["vision"].shape[1]),
        "text": (
            np.asarray(part["text_bert"])[:, 1, :].astype(bool)
            if "text_bert" in part
            else real_rows(features["text"])
        ),
    }
    labels = np.asarray(part["regression_labels"], dtype=np.float32).reshape(-1)
    return to_samples(features, masks, labels, sample_ids(part.get("id"), len(labels)))
