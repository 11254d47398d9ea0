"""The train/serve contract: a model is served only by extractors that produce its features exactly."""

import pytest

from grf_stream.features import AudioExtractor, TextExtractor, VideoExtractor, feature_spec
from grf_stream.spec import FeatureSpec, FeatureSpecMismatch, ModalitySpec


def test_a_matching_spec_is_accepted_and_more_served_modalities_are_fine():
    feature_spec().check_produced_by(feature_spec())
    feature_spec(["text", "audio"]).check_produced_by(feature_spec())


def test_a_version_mismatch_names_both_specs_and_the_fix():
    old_audio = ModalitySpec("speech-descriptors", "0", 26, 100.0)
    with pytest.raises(FeatureSpecMismatch) as error:
        FeatureSpec({"audio": old_audio}).check_produced_by(feature_spec())
    message = str(error.value)
    assert ("audio: recorded speech-descriptors v0 (size 26, 100/s), produced speech-descriptors v1 (size 26, 100/s)"
            in message)
    assert "python -m grf_stream.extract" in message


def test_a_modality_no_extractor_serves_is_named():
    recorded = FeatureSpec({"text": TextExtractor.output_spec(), "video": VideoExtractor.output_spec()})
    with pytest.raises(FeatureSpecMismatch, match="video: recorded face-mesh-geometry v1 .*no extractor serves it"):
        recorded.check_produced_by(feature_spec(["text"]))


def test_mismatches_go_both_ways_as_a_store_needs():
    audio_only = FeatureSpec({"audio": AudioExtractor.output_spec()})
    assert feature_spec(["audio"]).mismatches(audio_only) == []
    assert [m.split(":")[0] for m in feature_spec().mismatches(audio_only)] == ["text", "video"]


def test_feature_spec_round_trips_through_the_store_format():
    spec = feature_spec()
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    assert spec.sizes() == {"text": 384, "audio": 26, "video": 17}
    with pytest.raises(ValueError, match="unknown modalities"):
        feature_spec(["smell"])
