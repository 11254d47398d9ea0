"""A run that meets NaN stops with an error naming where, instead of choosing checkpoints on it."""

import numpy as np
import pytest
import torch

from grf_stream.data import Sample
from grf_stream.model import GRF, GRFConfig
from trainer.config import TrainConfig
from trainer.evaluate import evaluate_model
from trainer.train import optimise


def model():
    torch.manual_seed(0)
    return GRF(GRFConfig(modalities={"text": 4, "audio": 3}, d_model=8, num_layers=1, num_heads=2, d_ffn=16))


def sample(name, audio):
    return Sample(name, 0.5, {"text": np.ones((2, 4), np.float32), "audio": audio},
                  {"text": np.ones(2, bool), "audio": np.ones(len(audio), bool)})


def test_evaluation_names_the_split_batch_and_samples_with_non_finite_predictions():
    fine, broken = np.zeros((3, 3), np.float32), np.full((3, 3), np.nan, np.float32)
    samples = [sample("clean_1", fine), sample("vid_7", broken)]
    assert np.isfinite(evaluate_model(model(), samples[:1], ["audio", "text"]).predictions).all()
    with pytest.raises(FloatingPointError, match=r"valid batch 1: non-finite predictions for vid_7: check"):
        evaluate_model(model(), samples, ["audio", "text"], split="valid")


def test_a_non_finite_loss_stops_training_before_it_spoils_the_weights():
    grf = model()
    before = [p.detach().clone() for p in grf.parameters()]
    optimizer = torch.optim.AdamW(grf.parameters(), lr=1e-3)
    loss = sum(p.sum() for p in grf.parameters()) * float("nan")  # a loss with gradients into every weight
    with pytest.raises(FloatingPointError, match="epoch 3, training batch 5: the loss is nan. Check the training data"):
        optimise(loss, grf, optimizer, None, TrainConfig(), "epoch 3, training batch 5")
    assert all(torch.equal(a, b) for a, b in zip(before, grf.parameters()))
