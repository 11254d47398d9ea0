"""What one batch asks of the model: the fusion order, hidden modalities, windows, the loss."""

from __future__ import annotations

import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from grf_stream.data import Batch
from grf_stream.data.streams import MediaTrack, StreamBatch, Stretch, Utterance, collate_streams, stretch_stream
from grf_stream.model import GRFOutput
from grf_stream.windows import cut
from trainer.config import OptimConfig, RegimeConfig, StreamConfig

Step = tuple[str, Tensor, Tensor]  # (modality, features (B, T, d), mask (B, T))


def batch_order(default: list[str], regime: RegimeConfig, seed: int, epoch: int, index: int) -> list[str]:
    """The modality order of one batch: fixed, or a permutation that depends only on (seed, epoch, batch)."""
    if regime.order == "fixed":
        return list(default)
    order = list(default)
    random.Random(f"{seed}/{epoch}/{index}").shuffle(order)
    return order


def batch_windows(regime: RegimeConfig, seed: int, epoch: int, index: int) -> dict[str, int]:
    """The windows of one batch: regime.window_steps with chance regime.window_p, else none;
    the choice depends only on (seed, epoch, batch)."""
    if regime.window_p >= 1 or random.Random(f"{seed}/{epoch}/{index}/windows").random() < regime.window_p:
        return regime.window_steps
    return {}


def hide_modalities(masks: dict[str, Tensor], p: float, generator: torch.Generator) -> dict[str, Tensor]:
    """Modality dropout: each (sample, modality) is hidden with chance p; one modality always stays."""
    names = list(masks)
    batch = next(iter(masks.values())).shape[0]
    hidden = torch.rand(batch, len(names), generator=generator) < p  # (B, M)
    keep_one = torch.randint(len(names), (batch,), generator=generator)  # (B,)
    hidden[torch.arange(batch), keep_one] = False
    return {m: masks[m] & ~hidden[:, i, None].to(masks[m].device) for i, m in enumerate(names)}


def fusion_steps(batch: Batch, order: list[str], window_steps: dict[str, int]) -> list[Step]:
    """The batch as fusion steps: a windowed modality gives one step per window (the server's window
    policy, grf_stream/windows.py, over the whole sequence), all in time order.

    Windows of different modalities interleave by where they end, as a fraction of their
    sequence: a stream can fuse a window only once it is complete, so an unwindowed modality
    (a transcript phrase) comes after the windows it spans. Ties keep `order`. A window with no
    real step in any sample is left out.
    """
    windows = []
    for rank, m in enumerate(o for o in order if o in batch.features):
        x, mask = batch.features[m], batch.masks[m]
        length = x.shape[1]
        for window in cut(length, window_steps.get(m, length), ended=True):
            if mask[:, window].any():
                windows.append((window.stop / length, rank, (m, x[:, window], mask[:, window])))
    windows.sort(key=lambda w: w[:2])
    return [step for _, _, step in windows]


def loss(output: GRFOutput, labels: Tensor, regime: RegimeConfig) -> Tensor:
    """L1 of the final prediction, plus the weighted deep-supervision and auxiliary-head terms."""
    total = F.l1_loss(output.prediction, labels)
    earlier = output.step_predictions[:, :-1]  # (B, n-1)
    if regime.deep_supervision and earlier.shape[1]:
        total = total + regime.deep_supervision * F.l1_loss(earlier, labels[:, None].expand_as(earlier))
    if regime.aux_weight and output.aux_prediction is not None:
        total = total + regime.aux_weight * F.l1_loss(output.aux_prediction, labels)
    return total


def stream_batch(videos: dict[str, list[Utterance]], track: MediaTrack, config: StreamConfig,
                 rng: np.random.Generator, vary: float = 0.0) -> StreamBatch:
    """config.batch_size training streams of the same number of consecutive utterances, from videos drawn by
    how many utterances they have, each cut at a random place with random media (varied by `vary`, as
    data.distractors.vary says). Lead and tail are drawn once per batch: a batch runs as long as its
    longest stream, so its streams share them."""
    count = int(rng.integers(1, config.max_utterances + 1))
    lead, tail = rng.uniform(*config.lead_s), rng.uniform(*config.tail_s)
    eligible = [(video, utterances) for video, utterances in videos.items() if len(utterances) >= count]
    weights = np.array([len(u) - count + 1 for _, u in eligible], float)
    streams = []
    for _ in range(config.batch_size):
        video, utterances = eligible[rng.choice(len(eligible), p=weights / weights.sum())]
        first = int(rng.integers(len(utterances) - count + 1))
        stretch = Stretch(count, lead, tail, config.max_interval_s)
        recorded = track.varied(rng, vary)  # one camera and microphone per stream
        streams.append(stretch_stream(video, utterances, first, stretch, recorded, config.window_s, rng))
    return collate_streams(streams, config.text_weight)


def stream_loss(output: GRFOutput, batch: StreamBatch, config: StreamConfig) -> Tensor:
    """Weighted L1 of every scored step against the latest phrase's label, plus two terms over the
    scored steps that carry no text: stability, their mean |change of prediction|, and gate_sparsity,
    their mean gate sigmoid (6)."""
    y, weights = output.step_predictions, batch.weights  # (B, S)
    total = (weights * (y - batch.targets).abs()).sum() / weights.sum().clamp(min=1.0)
    quiet = ((weights[:, 1:] > 0) & ~batch.text[:, 1:]).float()  # (B, S-1), the fusion steps of output.gates
    quiet_steps = quiet.sum().clamp(min=1.0)
    if config.stability:
        moved = (y[:, 1:] - y[:, :-1]).abs()
        total = total + config.stability * (quiet * moved).sum() / quiet_steps
    if config.gate_sparsity:
        # The sigmoid before the floor, not z: an L1 push on z stops once a gate is shut, just under the
        # floor, where windows of a recording never seen in training open it again. The sigmoid keeps
        # being pushed down, away from the floor.
        sigmoids = output.gate_sigmoids.mean(dim=-1)  # (B, S-1)
        total = total + config.gate_sparsity * (quiet * sigmoids).sum() / quiet_steps
    return total


def learning_rate(epoch: int, optim: OptimConfig, epochs: int) -> float:
    """Linear warm-up over optim.warmup_epochs, then cosine from optim.lr to optim.min_lr at the end."""
    if epoch < optim.warmup_epochs:
        return optim.lr * (epoch + 1) / optim.warmup_epochs
    span = max(1, epochs - optim.warmup_epochs)
    progress = (epoch - optim.warmup_epochs) / span
    return optim.min_lr + (optim.lr - optim.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
