"""The cheap CPU-training dropout: the masks' law, and attention equal to nn.MultiheadAttention's."""

import copy

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from grf_stream.dropout import Attention, Dropout, cheap_here, kept
from grf_stream.model import GRF, GRFConfig

D, HEADS = 16, 4
NO_DROP = 1e-9  # rounds to no dropped value: the cheap path, with nothing random in it


def test_kept_drops_p_and_keeps_the_mean():
    torch.manual_seed(0)
    mask = kept(torch.Size([1001, 999]), 0.2, torch.empty(0))  # a size that is no multiple of 4
    dropped = (mask == 0).double().mean().item()
    assert abs(dropped - 13107 / 65536) < 0.002  # 0.2 as a multiple of 2^-16
    kept_values = mask[mask != 0]
    assert_close(kept_values, torch.full_like(kept_values, 65536 / (65536 - 13107)))
    assert abs(mask.double().mean().item() - 1.0) < 0.005


def test_kept_follows_the_seed():
    torch.manual_seed(3)
    first = kept(torch.Size([64, 33]), 0.5, torch.empty(0))
    torch.manual_seed(3)
    assert torch.equal(first, kept(torch.Size([64, 33]), 0.5, torch.empty(0)))
    assert not torch.equal(first, kept(torch.Size([64, 33]), 0.5, torch.empty(0)))


def test_dropout_in_training_only():
    x = torch.randn(50, 40)
    dropout = Dropout(0.3)
    torch.manual_seed(0)
    out = dropout.train()(x)
    assert 0.25 < (out == 0).float().mean().item() < 0.35
    assert_close(out[out != 0], (x / (1 - round(0.3 * 65536) / 65536))[out != 0])
    assert torch.equal(dropout.eval()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))  # nothing to keep: torch's own


def pair(seed: int = 0) -> tuple[nn.MultiheadAttention, Attention]:
    """torch's attention (no dropout) and ours with the same weights; ours trains with a dropout that
    drops nothing."""
    torch.manual_seed(seed)
    reference = nn.MultiheadAttention(D, HEADS, batch_first=True)
    nn.init.normal_(reference.in_proj_bias)  # nonzero biases, so a mix-up of q, k and v shows
    ours = copy.deepcopy(reference)
    ours.__class__, ours.dropout = Attention, NO_DROP
    return reference, ours.train()


def padding(batch: int, steps: int, seed: int) -> torch.Tensor:
    """A bool key padding mask (True = padded) with one sample that has no real key at all."""
    g = torch.Generator().manual_seed(seed)
    real = torch.randint(1, steps + 1, (batch,), generator=g)
    real[1] = 0
    return torch.arange(steps)[None, :] >= real[:, None]


@pytest.mark.parametrize("kind", ["self", "cross", "separate"])
def test_attention_equals_torch_values_and_gradients(kind):
    reference, ours = pair()
    g = torch.Generator().manual_seed(1)
    query = torch.randn(4, 7, D, generator=g)
    memory = query if kind == "self" else torch.randn(4, 11, D, generator=g)
    value = memory if kind != "separate" else torch.randn(4, 11, D, generator=g)
    pad = padding(4, memory.shape[1], seed=2)
    outputs = []
    for module in (reference, ours):
        q = query.clone().requires_grad_()
        k = q if kind == "self" else memory.clone().requires_grad_()
        v = k if kind != "separate" else value.clone().requires_grad_()
        out = module(q, k, v, key_padding_mask=pad, need_weights=False)[0]
        out.square().sum().backward()
        outputs.append((out, q.grad, *[p.grad for p in module.parameters()]))
    # ours took its own path where the keys are the values (what the decoder layers pass), torch's otherwise
    assert ours.handles(memory, value, pad, False, None, False) == (kind != "separate")
    assert cheap_here(ours, ours.dropout, query)
    for mine, theirs in zip(outputs[1], outputs[0]):
        assert torch.isfinite(mine).all()
        assert_close(mine, theirs, rtol=1e-4, atol=1e-5)  # float32 sums in another order


def test_attention_dropout_keeps_the_expected_output():
    reference, ours = pair()
    ours.dropout = 0.5
    x = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(4))
    pad = padding(2, 5, seed=5)
    with torch.no_grad():
        expected = reference(x, x, x, key_padding_mask=pad, need_weights=False)[0]
        torch.manual_seed(0)
        draws = torch.stack([ours(x, x, x, key_padding_mask=pad, need_weights=False)[0] for _ in range(4000)])
    assert draws.std(dim=0).max() > 0.05  # it does drop
    assert_close(draws.mean(dim=0), expected, atol=0.03, rtol=0)


def test_model_trains_with_cheap_dropout_and_serves_with_torch():
    model = GRF(GRFConfig(modalities={"text": 8, "audio": 3}))
    layers = [layer for module in model.modules() if isinstance(module, nn.TransformerDecoder) for layer in module.layers]
    assert layers and all(type(layer.self_attn) is Attention and type(layer.multihead_attn) is Attention
                          and type(layer.dropout1) is Dropout for layer in layers)
    plain = nn.TransformerDecoderLayer(model.config.d_model, model.config.num_heads, model.config.d_ffn,
                                       batch_first=True)
    assert list(layers[0].state_dict()) == list(plain.state_dict())  # checkpoints load as before
