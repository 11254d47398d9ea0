import pytest

from grf_stream.data.store import FeatureSpec, ModalitySpec
from grf_stream.features import AudioExtractor, FeatureSpecMismatch, TextExtractor, VideoExtractor, check_spec, feature_spec


class Served:
    """Stands in for a loaded extractor: check_spec only reads `spec`."""

    def __init__(self, spec):
        self.spec = spec


def served(**changes):
    specs = {"text": TextExtractor.output_spec(), "audio": AudioExtractor.output_spec(), "video": VideoExtractor.output_spec()}
    specs.update(changes)
    return {m: Served(s) for m, s in specs.items()}


def test_a_matching_checkpoint_is_accepted():
    check_spec(feature_spec(), served())
    check_spec(feature_spec(["text", "audio"]), served())  # serving more modalities than the checkpoint uses is fine


def test_a_version_mismatch_names_both_specs():
    old_audio = ModalitySpec("speech-descriptors", "0", 26, 100.0)
    with pytest.raises(FeatureSpecMismatch) as error:
        check_spec(FeatureSpec({"audio": old_audio}), served())
    message = str(error.value)
    assert "audio: checkpoint has speech-descriptors v0 (size 26, 100/s), extractor gives speech-descriptors v1 (size 26, 100/s)" in message
    assert "python -m grf_stream.extract" in message


def test_a_modality_no_extractor_serves_is_named():
    checkpoint = FeatureSpec({"text": TextExtractor.output_spec(), "video": VideoExtractor.output_spec()})
    with pytest.raises(FeatureSpecMismatch, match="video: checkpoint has face-mesh-geometry v1 .* no extractor serves it"):
        check_spec(checkpoint, {"text": Served(TextExtractor.output_spec())})


def test_feature_spec_round_trips_through_the_store_format():
    spec = feature_spec()
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    assert spec.sizes() == {"text": 384, "audio": 26, "video": 17}
    with pytest.raises(ValueError, match="unknown modalities"):
        feature_spec(["smell"])
