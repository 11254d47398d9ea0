"""Datasets: MulT and MMSA pickles, the project's feature store, synthetic data; one in-memory form."""

from __future__ import annotations

from dataclasses import dataclass, field

from grf_stream.data.distractors import EVALUATION, DistractorConfig, Distractors, pair_split
from grf_stream.data.pickles import load_mmsa, load_mult
from grf_stream.data.samples import Batch, Sample, SentimentDataset, check_sizes, collate, with_absent
from grf_stream.data.store import FeatureStore
from grf_stream.data.synthetic import SyntheticConfig, generate
from grf_stream.spec import FeatureSpec, ModalitySpec

FORMATS = ("mult", "mmsa", "store", "synthetic")

__all__ = [
    "Batch", "DataConfig", "DistractorConfig", "Distractors", "FeatureSpec", "FeatureStore", "ModalitySpec", "Sample",
    "SentimentDataset", "check_sizes", "collate", "evaluation_form", "feature_spec", "load_distractors", "load_split",
    "pair_split", "with_absent",
]


@dataclass
class DataConfig:
    """Where a run's data comes from."""

    format: str = "synthetic"
    """mult (MulT pickle), mmsa (MMSA pickle), store (grf-stream feature store) or synthetic."""
    path: str = ""
    """The .pkl file or the store directory (unused for synthetic)."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Shapes and sizes when format is synthetic (generated in memory, deterministic)."""
    distractors: DistractorConfig = field(default_factory=DistractorConfig)
    """Real, unrelated audio and video for samples that have none (see data/distractors.py)."""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"data.format={self.format!r} is not one of {FORMATS}")
        if self.format != "synthetic" and not self.path:
            raise ValueError(f"data.format={self.format} needs data.path: the dataset file or directory")


def load_split(config: DataConfig, split: str) -> list[Sample]:
    """One split (train, valid or test) of the configured dataset."""
    if config.format == "mult":
        return load_mult(config.path, split)
    if config.format == "mmsa":
        return load_mmsa(config.path, split)
    if config.format == "store":
        return FeatureStore.open(config.path).load_split(split)
    return generate(config.synthetic)[split]


def load_distractors(config: DataConfig) -> Distractors | None:
    """The configured distractor recordings, extracted; None when data.distractors.media is unset."""
    return Distractors.from_media(config.distractors) if config.distractors.media else None


def evaluation_form(samples: list[Sample], distractors: Distractors | None) -> list[Sample]:
    """A split as it is evaluated: every sample lacking audio or video gets a window of each, the
    same windows in every epoch, every run and trainer.evaluate."""
    return pair_split(samples, distractors, 1.0, 0, EVALUATION) if distractors is not None else samples


def feature_spec(config: DataConfig, sizes: dict[str, int], distractors: Distractors | None = None) -> FeatureSpec:
    """The spec a checkpoint records: the store's own, else a description of the pickle's features;
    the distractors' extractors for the modalities they give."""
    if config.format == "store":
        spec = FeatureStore.open(config.path).spec
    else:
        spec = FeatureSpec({m: ModalitySpec(f"{config.format}-features", "1", d, 0.0) for m, d in sizes.items()})
    extra = distractors.spec.modalities if distractors is not None else {}
    return FeatureSpec({**spec.modalities, **extra})
