import pytest
import torch

from grf_stream.features import adapter
from grf_stream.features.text import load_plain_encoder


def rows(tokenizer, encoder, text="it was fine, I guess"):
    with torch.no_grad():
        return encoder(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]


def test_a_new_adapter_changes_nothing_and_only_it_trains():
    tokenizer, encoder = load_plain_encoder()
    before = rows(tokenizer, encoder)
    trainable = adapter.attach(encoder, rank=4, alpha=8.0)
    torch.testing.assert_close(rows(tokenizer, encoder), before)  # B starts at zero
    assert {id(p) for p in encoder.parameters() if p.requires_grad} == {id(p) for p in trainable}
    assert len(trainable) == 2 * len(adapter.TARGETS) * len(encoder.encoder.layer)


def test_merged_weights_equal_the_adapter_beside_them():
    torch.manual_seed(0)
    tokenizer, tuned = load_plain_encoder()
    adapter.attach(tuned, rank=4, alpha=8.0)
    for p in tuned.parameters():
        if p.requires_grad:
            p.data.normal_(0, 0.05)
    saved = adapter.state(tuned, rank=4, alpha=8.0)
    _, merged = load_plain_encoder()
    adapter.merge(merged, saved)
    torch.testing.assert_close(rows(tokenizer, merged), rows(tokenizer, tuned), atol=2e-5, rtol=1e-4)


def test_an_adapter_for_another_encoder_is_refused():
    _, encoder = load_plain_encoder()
    adapter.attach(encoder, rank=2, alpha=2.0)
    saved = adapter.state(encoder, rank=2, alpha=2.0)
    del saved["factors"]["5.output.dense"]
    _, plain = load_plain_encoder()
    with pytest.raises(ValueError, match="does not fit this encoder"):
        adapter.merge(plain, saved)
