"""What each training batch asks of the model: order, hidden modalities, windows, loss, schedule."""

import math

import pytest
import torch

from grf_stream.data import collate
from grf_stream.data.synthetic import SyntheticConfig, generate
from grf_stream.model import GRFOutput
from grf_stream.data.streams import StreamBatch
from trainer.config import OptimConfig, RegimeConfig, StreamConfig
from trainer.steps import batch_order, batch_windows, fusion_steps, hide_modalities, learning_rate, loss, stream_loss


def batch(lengths={"text": 4, "audio": 12}):
    config = SyntheticConfig(sizes={m: 3 for m in lengths}, lengths=lengths, samples={"train": 5})
    samples = generate(config)["train"]
    for s in samples:  # full lengths, so window counts are known
        for m, t in lengths.items():
            s.features[m] = torch.randn(t, 3).numpy()
            s.masks[m] = torch.ones(t, dtype=torch.bool).numpy()
    return collate(samples)


def test_windows_interleave_in_time_as_they_complete():
    steps = fusion_steps(batch(), ["text", "audio"], {"text": 2, "audio": 4})
    # text windows end at 1/2, 1; audio at 1/3, 2/3, 1: sorted by end, text first on ties
    assert [m for m, _, _ in steps] == ["audio", "text", "audio", "text", "audio"]
    assert [x.shape[1] for _, x, _ in steps] == [4, 2, 4, 2, 4]


def test_a_whole_phrase_comes_after_the_windows_it_spans():
    steps = fusion_steps(batch(), ["text", "audio"], {"audio": 4})
    assert [m for m, _, _ in steps] == ["audio", "audio", "text", "audio"]


def test_without_windows_each_modality_is_one_step_in_order():
    steps = fusion_steps(batch(), ["audio", "text"], {})
    assert [(m, x.shape[1]) for m, x, _ in steps] == [("audio", 12), ("text", 4)]


def test_a_window_of_pure_padding_is_left_out():
    b = batch()
    b.masks["audio"][:, 8:] = False
    steps = fusion_steps(b, ["text", "audio"], {"audio": 4})
    assert [m for m, _, _ in steps].count("audio") == 2


def test_modality_dropout_always_keeps_one_modality():
    masks = {m: torch.ones(1000, 5, dtype=torch.bool) for m in ("a", "b", "c")}
    kept = hide_modalities(masks, 0.9, torch.Generator().manual_seed(0))
    alive = torch.stack([kept[m].any(1) for m in masks], dim=1)  # (B, M)
    assert alive.any(1).all()
    assert 0.55 < 1 - alive.float().mean() < 0.65  # 0.9 hidden, except the one kept: 0.9 * 2/3


def test_a_batch_is_windowed_with_chance_window_p_fixed_by_seed_epoch_and_batch():
    windows = {"audio": 100}
    always, never, half = (RegimeConfig(window_steps=windows, window_p=p) for p in (1.0, 0.0, 0.5))
    assert all(batch_windows(always, 0, 0, i) == windows for i in range(20))
    assert all(batch_windows(never, 0, 0, i) == {} for i in range(20))
    chosen = [batch_windows(half, 0, 2, i) == windows for i in range(200)]
    assert 70 < sum(chosen) < 130
    assert chosen == [batch_windows(half, 0, 2, i) == windows for i in range(200)]
    with pytest.raises(ValueError, match="window_p"):
        RegimeConfig(window_p=1.5)


def test_random_order_is_a_permutation_fixed_by_seed_epoch_and_batch():
    regime = RegimeConfig(order="random")
    orders = {tuple(batch_order(["a", "b", "c"], regime, 0, 0, i)) for i in range(30)}
    assert len(orders) > 3 and all(sorted(o) == ["a", "b", "c"] for o in orders)
    assert batch_order(["a", "b", "c"], regime, 0, 3, 7) == batch_order(["a", "b", "c"], regime, 0, 3, 7)
    assert batch_order(["a", "b", "c"], RegimeConfig(), 0, 3, 7) == ["a", "b", "c"]


def test_loss_terms():
    labels = torch.tensor([1.0, -1.0])
    steps = torch.tensor([[0.0, 1.0], [0.0, -1.0]])  # perfect at the end, |1| off before
    out = GRFOutput(steps[:, -1], steps, torch.zeros(2, 2, 4), torch.zeros(2, 1, 4), torch.tensor([1.5, -1.0]))
    assert loss(out, labels, RegimeConfig()).item() == pytest.approx(0.0)
    assert loss(out, labels, RegimeConfig(deep_supervision=0.5)).item() == pytest.approx(0.5)
    assert loss(out, labels, RegimeConfig(aux_weight=0.4)).item() == pytest.approx(0.4 * 0.25)


def test_learning_rate_warms_up_then_follows_a_cosine():
    optim = OptimConfig(lr=1e-3, warmup_epochs=5, min_lr=1e-6)
    assert learning_rate(0, optim, 100) == pytest.approx(2e-4)
    assert learning_rate(4, optim, 100) == pytest.approx(1e-3)
    assert learning_rate(5, optim, 100) == pytest.approx(1e-3)
    middle = 5 + 95 / 2
    assert learning_rate(int(middle), optim, 100) == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * 47 / 95)))
    assert learning_rate(100, optim, 100) == pytest.approx(1e-6)


def test_stream_loss_scores_the_latest_phrase_and_the_stability_term_counts_quiet_steps_only():
    y = torch.tensor([[0.0, 1.0, 1.5, 3.0, 2.0]])  # steps: audio, text, video, text, audio
    batch = StreamBatch([], torch.tensor([[0.0, 2.0, 2.0, 2.5, 2.5]]), torch.tensor([[0.0, 2.0, 1.0, 2.0, 1.0]]),
                        torch.tensor([[False, True, False, True, False]]), [[0, 1, 2, 3, 4]])
    out = GRFOutput(y[:, -1], y, torch.zeros(1, 5, 4), torch.zeros(1, 4, 4))
    l1 = (2 * 1.0 + 0.5 + 2 * 0.5 + 0.5) / 6  # weighted, nothing before the first phrase
    assert stream_loss(out, batch, StreamConfig()).item() == pytest.approx(l1)
    moved = (0.5 + 1.0) / 2  # the video and last audio steps; not the phrases, not the step before any
    assert stream_loss(out, batch, StreamConfig(stability=0.5)).item() == pytest.approx(l1 + 0.5 * moved)


def test_gate_sparsity_term_is_the_mean_gate_sigmoid_of_quiet_scored_steps():
    y = torch.tensor([[0.0, 1.0, 1.5, 3.0, 2.0]])  # steps: audio, text, video, text, audio
    batch = StreamBatch([], torch.tensor([[0.0, 2.0, 2.0, 2.5, 2.5]]), torch.tensor([[0.0, 2.0, 1.0, 2.0, 1.0]]),
                        torch.tensor([[False, True, False, True, False]]), [[0, 1, 2, 3, 4]])
    sigmoids = torch.tensor([[0.9, 0.2, 0.7, 0.4]])[..., None].expand(1, 4, 4)  # fusion steps 1-4, dims alike
    out = GRFOutput(y[:, -1], y, torch.zeros(1, 5, 4), torch.zeros(1, 4, 4), gate_sigmoids=sigmoids)
    plain = stream_loss(out, batch, StreamConfig()).item()
    quiet_gate = (0.2 + 0.4) / 2  # the video and last audio steps; the phrases' gates are free
    assert stream_loss(out, batch, StreamConfig(gate_sparsity=2.0)).item() == pytest.approx(plain + 2.0 * quiet_gate)
