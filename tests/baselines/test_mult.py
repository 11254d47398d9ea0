"""Tests of the MulT baseline (grf_stream.baselines.mult)."""

import pytest
import torch

from grf_stream.baselines.mult import MulT, MulTConfig, TransformerEncoder

MOSI = {"text": 300, "audio": 74, "vision": 35}


def small_config(sizes: dict[str, int], **overrides) -> MulTConfig:
    kwargs = dict(d_model=8, num_layers=2, num_heads=2)
    kwargs.update(overrides)
    return MulTConfig(modalities=sizes, **kwargs)


def random_features(sizes, lengths, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, lengths[m], size, generator=g) for m, size in sizes.items()}


@pytest.mark.parametrize(
    "sizes, lengths",
    [
        ({"a": 5, "b": 7}, {"a": 4, "b": 9}),
        ({"text": 12, "audio": 6, "vision": 3}, {"text": 5, "audio": 11, "vision": 7}),
        ({"m0": 3, "m1": 4, "m2": 8, "m3": 5, "m4": 2}, {"m0": 2, "m1": 6, "m2": 3, "m3": 8, "m4": 1}),
    ],
)
def test_output_shape(sizes, lengths):
    torch.manual_seed(0)
    model = MulT(small_config(sizes))
    out = model(random_features(sizes, lengths, batch=4))
    assert out.prediction.shape == (4,)
    assert torch.isfinite(out.prediction).all()


@pytest.mark.parametrize("n", [2, 3, 5])
def test_one_crossmodal_transformer_per_ordered_pair(n):
    sizes = {f"m{i}": 4 + i for i in range(n)}
    model = MulT(small_config(sizes))
    crossmodal = [enc for per_target in model.crossmodal.values() for enc in per_target.values()]
    assert len(crossmodal) == n * (n - 1)
    # n(n-1) crossmodal transformers plus one mem transformer per target, nothing else.
    assert sum(isinstance(m, TransformerEncoder) for m in model.modules()) == n * (n - 1) + n
    assert all(enc.dim == 8 for enc in crossmodal)
    assert all(model.mem[m].dim == (n - 1) * 8 for m in sizes)


def test_parameter_count_official_mosi():
    # Official MOSI config: text 300, audio 74, vision 35; d = 30, 5 layers, 5 heads.
    # Per layer of width w: attention 4w^2 + 4w (in_proj 3w^2+3w, out_proj w^2+w),
    #   fc1 4w^2 + 4w, fc2 4w^2 + w, two LayerNorms 4w  ->  12w^2 + 13w.
    # Input Conv1d projections (no bias): (300 + 74 + 35) * 30          =  12,270
    # Crossmodal (w=30, 5 layers): 5 * 11,190 + final LN 60 = 56,010; x6 = 336,060
    # Mem (w=60, max(5, 3)=5 layers): 5 * 43,980 + 120 = 220,020; x3   = 660,060
    # Head (C = 180): proj1 32,580 + proj2 32,580 + out_layer 181       =  65,341
    # Total                                                             = 1,073,731
    model = MulT(MulTConfig(modalities=dict(MOSI)))
    assert sum(p.numel() for p in model.parameters()) == 1_073_731


def test_padding_does_not_change_prediction():
    torch.manual_seed(0)
    sizes = {"text": 12, "audio": 6, "vision": 3}
    lengths = {"text": 5, "audio": 9, "vision": 7}
    model = MulT(small_config(sizes)).eval()
    feats = random_features(sizes, lengths, batch=3)
    # Ragged batch: sample i of each modality keeps T - i real steps.
    masks = {m: torch.arange(t)[None, :] < (t - torch.arange(3))[:, None] for m, t in lengths.items()}

    g = torch.Generator().manual_seed(1)
    padded_feats, padded_masks = {}, {}
    for m, x in feats.items():
        extra = 4 + len(m)  # a different amount of padding per modality
        garbage = 100 * torch.randn(3, extra, x.shape[-1], generator=g)
        garbage[0, 0, 0] = float("nan")
        x = torch.where(masks[m][..., None], x, torch.full_like(x, 1e4))  # garbage in existing padding too
        padded_feats[m] = torch.cat([x, garbage], dim=1)
        padded_masks[m] = torch.cat([masks[m], torch.zeros(3, extra, dtype=torch.bool)], dim=1)

    with torch.no_grad():
        ref = model(feats, masks).prediction
        padded = model(padded_feats, padded_masks).prediction
        # Each sample alone, cut to its real length, without any mask.
        alone = torch.cat(
            [
                model({m: x[i : i + 1, : int(masks[m][i].sum())] for m, x in feats.items()}).prediction
                for i in range(3)
            ]
        )
    torch.testing.assert_close(padded, ref)
    torch.testing.assert_close(alone, ref)


def test_fully_masked_modality_gives_finite_prediction():
    torch.manual_seed(0)
    sizes = {"text": 12, "audio": 6, "vision": 3}
    lengths = {"text": 5, "audio": 9, "vision": 7}
    feats = random_features(sizes, lengths, batch=2)
    masks = {m: torch.ones(2, t, dtype=torch.bool) for m, t in lengths.items()}
    masks["audio"][1] = False  # sample 1 has no audio at all
    model = MulT(small_config(sizes))
    for mode in (model.eval, model.train):
        mode()
        prediction = model(feats, masks).prediction
        assert torch.isfinite(prediction).all()
    prediction.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    sizes = {"text": 12, "audio": 6, "vision": 3}
    model = MulT(small_config(sizes)).train()
    feats = random_features(sizes, {"text": 5, "audio": 9, "vision": 7})
    model(feats).prediction.pow(2).mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_missing_modality_raises():
    sizes = {"text": 12, "audio": 6}
    model = MulT(small_config(sizes))
    feats = random_features(sizes, {"text": 5, "audio": 9})
    del feats["audio"]
    with pytest.raises(ValueError, match=r"'audio' is missing.*MulT needs all modalities"):
        model(feats)


def test_wrong_feature_size_raises():
    sizes = {"text": 12, "audio": 6}
    model = MulT(small_config(sizes))
    feats = random_features({"text": 12, "audio": 7}, {"text": 5, "audio": 9})
    with pytest.raises(ValueError, match=r"features\['audio'\] has feature size 7; expected 6"):
        model(feats)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(modalities={"text": 12}), r"modalities=.*at least 2 modalities"),
        (dict(modalities={"text": 12, "audio": 0}), r"modalities\['audio'\]=0.*positive int"),
        (dict(d_model=31), r"d_model=31 is not divisible by num_heads=5.*multiple of num_heads"),
        (dict(num_layers=0), r"num_layers=0: must be a positive int"),
        (dict(attn_dropout=1.0), r"attn_dropout=1.0: dropout must be a float in \[0, 1\)"),
        (dict(embed_dropout=-0.1), r"embed_dropout=-0.1: dropout must be"),
    ],
)
def test_bad_config_raises(kwargs, match):
    kwargs = {"modalities": dict(MOSI), **kwargs}
    with pytest.raises(ValueError, match=match):
        MulTConfig(**kwargs)
