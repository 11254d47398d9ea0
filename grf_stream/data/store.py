"""The project's own feature store: what the offline extractor writes and the trainer reads.

Layout of a store directory (one per dataset and feature spec):

    spec.json            {"format": "grf-feature-store", "version": 1,
                          "modalities": {name: {"extractor", "version", "size", "rate"}}}
    samples.csv          one row per sample: id, split, label (continuous), plus free columns
    features/<id>.npz    one float32 array (T_m, size_m) per modality name; T_m may differ per
                         modality and per sample, and is 0 where a modality has no data;
                         a row of zeros is a step with no data (the extractors' masked rows)

The spec is what checkpoints record and what the server checks its extractors against. Samples are
written one file each, so an interrupted extraction resumes by skipping the ids already on disk;
`samples.csv` is rewritten at the end of a run from every finished sample.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from grf_stream.data.samples import Sample, no_data, real_rows
from grf_stream.spec import SPLITS, FeatureSpec, ModalitySpec


class FeatureStore:
    """Read and write one store directory; see the module docstring for the layout."""

    def __init__(self, root: str | Path, spec: FeatureSpec):
        self.root, self.spec = Path(root), spec

    @classmethod
    def create(cls, root: str | Path, spec: FeatureSpec) -> "FeatureStore":
        """A new store, or an existing one with the same spec (to resume into)."""
        root = Path(root)
        if (root / "spec.json").exists():
            store = cls.open(root)
            if store.spec != spec:
                raise ValueError(f"{root} holds features of another spec: " + "; ".join(spec.mismatches(store.spec)))
            return store
        (root / "features").mkdir(parents=True, exist_ok=True)
        (root / "spec.json").write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
        return cls(root, spec)

    @classmethod
    def open(cls, root: str | Path) -> "FeatureStore":
        root = Path(root)
        if not (root / "spec.json").is_file():
            raise FileNotFoundError(f"{root} is not a feature store (no spec.json): write one with python -m grf_stream.extract")
        return cls(root, FeatureSpec.from_dict(json.loads((root / "spec.json").read_text())))

    def feature_path(self, sample_id: str) -> Path:
        return self.root / "features" / f"{sample_id}.npz"

    def has(self, sample_id: str) -> bool:
        return self.feature_path(sample_id).exists()

    def write_features(self, sample_id: str, features: dict[str, np.ndarray]) -> None:
        """Store one sample's features atomically (a crash never leaves half a file)."""
        for m, x in features.items():
            size = self.spec.modalities[m].size
            if x.ndim != 2 or x.shape[1] != size:
                raise ValueError(f"{sample_id}/{m}: features {x.shape}, expected (T, {size})")
        tmp = self.feature_path(sample_id).with_suffix(".tmp.npz")
        np.savez(tmp, **{m: np.asarray(x, dtype=np.float32) for m, x in features.items()})
        tmp.replace(self.feature_path(sample_id))

    def write_index(self, rows: list[dict]) -> None:
        """Write samples.csv: rows with at least id, split, label."""
        columns = ["id", "split", "label"] + sorted({k for r in rows for k in r} - {"id", "split", "label"})
        with open(self.root / "samples.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    def index(self) -> list[dict]:
        path = self.root / "samples.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the extraction did not finish; run it again to resume")
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    def load_split(self, split: str) -> list[Sample]:
        """Every sample of one split, features in memory."""
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {SPLITS}")
        samples = []
        for row in self.index():
            if row["split"] != split:
                continue
            with np.load(self.feature_path(row["id"])) as data:
                arrays = {m: data[m] if m in data else np.zeros((0, s.size), np.float32) for m, s in self.spec.modalities.items()}
            samples.append(sample_from_arrays(row["id"], float(row["label"]), arrays))
        return samples


def sample_from_arrays(sample_id: str, label: float, arrays: dict[str, np.ndarray]) -> Sample:
    """A row of zeros holds no data (a video frame without a face) and is masked, as the extractor
    masked it; a modality with no rows becomes one masked zero step."""
    features, masks = {}, {}
    for m, x in arrays.items():
        if len(x) == 0:
            features[m], masks[m] = no_data(x.shape[1])
        else:
            features[m] = x.astype(np.float32)
            masks[m] = real_rows(features[m])
    return Sample(sample_id, label, features, masks)
