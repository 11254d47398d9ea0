"""A small timed feature store for the trainer's tests, and where the real recordings are."""

from pathlib import Path

import numpy as np

MEDIA = Path(__file__).resolve().parents[3] / "shared" / "data" / "media"  # absent on a user's fresh machine


def text_store(root: Path) -> Path:
    """A store of text features alone (the extractor's spec), labels from the mean of the rows."""
    from grf_stream.data import FeatureStore
    from grf_stream.features import feature_spec

    store = FeatureStore.create(root, feature_spec(("text",)))
    rng, rows = np.random.default_rng(0), []
    for i, split in enumerate(["train"] * 48 + ["valid"] * 16 + ["test"] * 16):
        features = rng.normal(size=(int(rng.integers(3, 9)), 384)).astype(np.float32)
        store.write_features(f"u{i}", {"text": features})
        start = 1.5 + 3.0 * (i % 8)  # 8 utterances a video, 3 s apart, each 2 s long
        rows.append({"id": f"u{i}", "split": split, "label": float(np.clip(8 * features[:, :4].mean(), -3, 3)),
                     "video_id": f"video{i // 8}", "start": start, "end": start + 2.0})
    store.write_index(rows)
    return root
