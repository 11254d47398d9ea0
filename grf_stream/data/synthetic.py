"""Synthetic multimodal-sentiment data, in every format the loaders read, for tests and benchmarks.

Each sample has a hidden score z_m ~ N(0, 1) per modality; every real step of modality m is
z_m * v_m + noise for a fixed direction v_m. The label needs more than one modality:

    label = clip(1.5 z_text + z_audio * z_vision + 0.5 z_audio, -3, 3)

so a model that reads text alone explains only part of it, and the audio-vision product can be
learned only by fusing the two. Lengths vary per sample; padding follows each format's convention.

    python -m grf_stream.data.synthetic --format mult --out /tmp/mosi_synthetic.pkl
"""

from __future__ import annotations

import argparse
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from grf_stream.data.samples import Sample
from grf_stream.data.store import FeatureStore
from grf_stream.spec import SPLITS, FeatureSpec, ModalitySpec

# Unaligned CMU-MOSI shapes: MulT's GloVe/COVAREP/FACET, and MMSA's BERT text.
MULT_SHAPES = {"text": (50, 300), "audio": (375, 5), "vision": (500, 20)}
MMSA_SHAPES = {"text": (50, 768), "audio": (375, 5), "vision": (500, 20)}


@dataclass
class SyntheticConfig:
    """How much synthetic data to make, and its shapes."""

    sizes: dict[str, int] = field(default_factory=lambda: {"text": 300, "audio": 5, "vision": 20})
    """Feature size per modality (the label uses text, audio and vision when present)."""
    lengths: dict[str, int] = field(default_factory=lambda: {"text": 50, "audio": 375, "vision": 500})
    """Maximum steps per modality; each sample has between a quarter and all of them."""
    samples: dict[str, int] = field(default_factory=lambda: {"train": 256, "valid": 64, "test": 64})
    """Samples per split."""
    noise: float = 1.0
    """Standard deviation of the per-step noise."""
    seed: int = 0


def label_of(z: dict[str, float]) -> float:
    value = 1.5 * z.get("text", 0.0) + z.get("audio", 0.0) * z.get("vision", 0.0) + 0.5 * z.get("audio", 0.0)
    return float(np.clip(value, -3.0, 3.0))


def generate(config: SyntheticConfig) -> dict[str, list[Sample]]:
    """split -> samples, every step real (variable lengths, no padding yet)."""
    rng = np.random.default_rng(config.seed)
    directions = {m: unit(rng.standard_normal(d)) * np.sqrt(d) for m, d in config.sizes.items()}
    data = {}
    for split in SPLITS:
        samples = []
        for i in range(config.samples.get(split, 0)):
            z = {m: float(rng.standard_normal()) for m in config.sizes}
            features = {}
            for m, d in config.sizes.items():
                steps = int(rng.integers(max(1, config.lengths[m] // 4), config.lengths[m] + 1))
                noise = config.noise * rng.standard_normal((steps, d))
                features[m] = (z[m] * directions[m] + noise).astype(np.float32)
            masks = {m: np.ones(len(x), bool) for m, x in features.items()}
            samples.append(Sample(f"{split}_{i:05d}", label_of(z), features, masks))
        data[split] = samples
    return data


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def padded(samples: list[Sample], m: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, steps, d) features with zero rows after each sample's real length, and the lengths."""
    size = samples[0].features[m].shape[1]
    x = np.zeros((len(samples), steps, size), np.float32)
    lengths = np.zeros(len(samples), np.int64)
    for i, s in enumerate(samples):
        t = min(steps, len(s.features[m]))
        x[i, :t], lengths[i] = s.features[m][:t], t
    return x, lengths


def write_mult(data: dict[str, list[Sample]], path: Path, lengths: dict[str, int]) -> None:
    out = {}
    for split, samples in data.items():
        part = {m: padded(samples, m, lengths[m])[0] for m in ("text", "audio", "vision")}
        part["audio"][:, -1, 0] = -np.inf  # real MOSI audio holds -inf; readers must cope
        part["labels"] = np.array([s.label for s in samples], np.float32).reshape(-1, 1, 1)
        part["id"] = np.array([[s.id, "0", "0"] for s in samples])
        out[split] = part
    path.write_bytes(pickle.dumps(out))


def write_mmsa(data: dict[str, list[Sample]], path: Path, lengths: dict[str, int]) -> None:
    out = {}
    for split, samples in data.items():
        text, text_lengths = padded(samples, "text", lengths["text"])
        audio, audio_lengths = padded(samples, "audio", lengths["audio"])
        vision, vision_lengths = padded(samples, "vision", lengths["vision"])
        attention = (np.arange(lengths["text"])[None, :] < text_lengths[:, None]).astype(np.float32)
        token_ids = np.where(attention > 0, 1000.0, 0.0)
        out[split] = {
            "text": text, "audio": audio, "vision": vision,
            "audio_lengths": audio_lengths, "vision_lengths": vision_lengths,
            "text_bert": np.stack([token_ids, attention, np.zeros_like(attention)], axis=1),
            "regression_labels": np.array([s.label for s in samples], np.float32),
            "id": np.array([s.id for s in samples]),
            "raw_text": np.array([f"synthetic utterance {s.id}" for s in samples]),
        }
    path.write_bytes(pickle.dumps(out))


def write_store(data: dict[str, list[Sample]], root: Path) -> FeatureStore:
    sizes = data["train"][0].features
    spec = FeatureSpec({m: ModalitySpec("synthetic", "1", x.shape[1], 0.0) for m, x in sizes.items()})
    store = FeatureStore.create(root, spec)
    rows = []
    for split, samples in data.items():
        for s in samples:
            store.write_features(s.id, s.features)
            rows.append({"id": s.id, "split": split, "label": s.label})
    store.write_index(rows)
    return store


def write(format: str, out: Path, config: SyntheticConfig | None = None) -> Path:
    """Write a synthetic dataset in `format` (mult, mmsa or store) with that format's real shapes."""
    shapes = {"mult": MULT_SHAPES, "mmsa": MMSA_SHAPES, "store": MULT_SHAPES}[format]
    config = config or SyntheticConfig(sizes={m: d for m, (_, d) in shapes.items()},
                                       lengths={m: t for m, (t, _) in shapes.items()})
    data = generate(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    if format == "mult":
        write_mult(data, out, config.lengths)
    elif format == "mmsa":
        write_mmsa(data, out, config.lengths)
    else:
        write_store(data, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic multimodal-sentiment dataset.")
    parser.add_argument("--format", choices=("mult", "mmsa", "store"), required=True)
    parser.add_argument("--out", type=Path, required=True, help="a .pkl file (mult, mmsa) or a directory (store)")
    parser.add_argument("--train", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shapes = {"mult": MULT_SHAPES, "mmsa": MMSA_SHAPES, "store": MULT_SHAPES}[args.format]
    config = SyntheticConfig(
        sizes={m: d for m, (_, d) in shapes.items()},
        lengths={m: t for m, (t, _) in shapes.items()},
        samples={"train": args.train, "valid": max(1, args.train // 4), "test": max(1, args.train // 4)},
        seed=args.seed,
    )
    print(f"wrote {write(args.format, args.out, config)}")


if __name__ == "__main__":
    main()
