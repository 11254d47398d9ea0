"""The train/serve contract: what produced each modality's features, and the one check that they agree.

A feature store, a checkpoint and a running server each carry a FeatureSpec. A model is served only
by extractors that produce exactly the features it was trained on (`FeatureSpec.check_produced_by`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

FORMAT, FORMAT_VERSION = "grf-feature-store", 1
SPLITS = ("train", "valid", "test")


class FeatureSpecMismatch(ValueError):
    """Features were asked of extractors that do not produce them (another extractor or version)."""


@dataclass(frozen=True)
class ModalitySpec:
    """What produced one modality's features."""

    extractor: str  # e.g. "minilm-l6-tokens"
    version: str  # bumped whenever the extractor's output changes
    size: int  # feature size d_m
    rate: float  # feature frames per second of media (0 for text: one row per token)

    def describe(self) -> str:
        return f"{self.extractor} v{self.version} (size {self.size}, {self.rate:g}/s)"


@dataclass(frozen=True)
class FeatureSpec:
    """The extractor, version, size and rate of every modality: the train/serve contract."""

    modalities: dict[str, ModalitySpec] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "modalities": {m: asdict(s) for m, s in self.modalities.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureSpec":
        if data.get("format") != FORMAT or data.get("version") != FORMAT_VERSION:
            raise ValueError(f"not a {FORMAT} v{FORMAT_VERSION} spec: format={data.get('format')!r} version={data.get('version')!r}")
        return cls({m: ModalitySpec(**s) for m, s in data["modalities"].items()})

    def sizes(self) -> dict[str, int]:
        return {m: s.size for m, s in self.modalities.items()}

    def mismatches(self, other: "FeatureSpec") -> list[str]:
        """Every modality on which the two differ, either way (empty when they agree)."""
        return [_difference(m, self.modalities.get(m), other.modalities.get(m))
                for m in sorted(set(self.modalities) | set(other.modalities))
                if self.modalities.get(m) != other.modalities.get(m)]

    def check_produced_by(self, produced: "FeatureSpec") -> None:
        """Refuse extractors (`produced`) that do not give every modality of this spec exactly as
        recorded; extractors of further modalities are allowed (their features are not fused)."""
        problems = [_difference(m, wanted, produced.modalities.get(m)) for m, wanted in sorted(self.modalities.items())
                    if produced.modalities.get(m) != wanted]
        if problems:
            raise FeatureSpecMismatch(
                "the model's features do not match the extractors': " + "; ".join(problems)
                + ". Serve it with the extractor versions it was trained on, or re-extract the features and retrain "
                "(python -m grf_stream.extract)")


def _difference(modality: str, recorded: ModalitySpec | None, produced: ModalitySpec | None) -> str:
    recorded_text = recorded.describe() if recorded else "nothing"
    produced_text = produced.describe() if produced else "nothing (no extractor serves it)"
    return f"{modality}: recorded {recorded_text}, produced {produced_text}"
