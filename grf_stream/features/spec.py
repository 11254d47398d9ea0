"""The train/serve contract: a checkpoint's feature spec must match the running extractors."""

from __future__ import annotations

from typing import Mapping

from grf_stream.data.store import FeatureSpec
from grf_stream.features.base import Extractor


class FeatureSpecMismatch(ValueError):
    """A checkpoint was trained on features that these extractors do not produce."""


def spec_of(extractors: Mapping[str, Extractor]) -> FeatureSpec:
    """The feature spec of a set of extractors, keyed by modality name."""
    return FeatureSpec({modality: extractor.spec for modality, extractor in extractors.items()})


def check_spec(checkpoint: FeatureSpec, extractors: Mapping[str, Extractor]) -> None:
    """Refuse a checkpoint whose features these extractors would not reproduce.

    Raises FeatureSpecMismatch naming, per modality, what the checkpoint recorded and what the
    extractors produce. Every modality the checkpoint uses must be served; extractors of further
    modalities the checkpoint does not know are allowed (their features are simply not fused).
    """
    served = spec_of(extractors).modalities
    problems = []
    for modality, wanted in sorted(checkpoint.modalities.items()):
        have = served.get(modality)
        if have is None:
            problems.append(f"{modality}: checkpoint has {_describe(wanted)}, no extractor serves it")
        elif have != wanted:
            problems.append(f"{modality}: checkpoint has {_describe(wanted)}, extractor gives {_describe(have)}")
    if problems:
        raise FeatureSpecMismatch(
            "checkpoint features do not match the extractors: " + "; ".join(problems)
            + ". Serve it with the extractor versions it was trained on, or re-extract the features "
            "and retrain (python -m grf_stream.extract)"
        )


def _describe(spec) -> str:
    return f"{spec.extractor} v{spec.version} (size {spec.size}, {spec.rate:g}/s)"
