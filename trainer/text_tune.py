"""Tune the text extractor to sentiment: low-rank adapters of its encoder, fitted to the labels.

    python -m trainer.text_tune                 # ../shared/data/mosi's CSV -> grf_stream/features/models/minilm_l6_mosi.pt
    python -m trainer.text_tune --labels label.csv --out adapter.pt --epochs 6 --seed 0

The text extractor's rows are its encoder's last hidden states. Frozen, they were trained for
sentence similarity, not sentiment: a ridge on their mean reaches MAE 0.968 on the CMU-MOSI test
split, and a GRF on them 0.853-0.865. Here every linear map of the encoder gets a rank-8 adapter
(grf_stream/features/adapter.py), trained with a linear head on the mean of the rows (exactly the
rows the extractor gives: [CLS], the word pieces, [SEP]) against the train split's labels, L1 loss.
The epoch with the lowest validation MAE is kept; the test split is never read. The extractor folds
the adapter into the encoder's weights, so the tuned rows cost what the plain ones did; the head is
thrown away, and a GRF is then trained on the tuned rows (re-extract the store first).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from grf_stream.features import adapter
from grf_stream.features.offline import LabelRow, read_labels
from grf_stream.features.text import ADAPTER_PATH, MAX_TOKENS, load_plain_encoder

RANK, ALPHA = 8, 16.0
LEARNING_RATES = {"adapters": 5e-4, "head": 1e-3}
BATCH = 16


class Tuner:
    """The encoder with its adapters, a linear head on the mean of its rows, and their optimiser."""

    def __init__(self, epochs: int, steps_per_epoch: int):
        self.tokenizer, self.encoder = load_plain_encoder()
        adapters = adapter.attach(self.encoder, RANK, ALPHA)
        self.head = nn.Linear(self.encoder.config.hidden_size, 1)
        self.optimiser = torch.optim.AdamW([{"params": adapters, "lr": LEARNING_RATES["adapters"]},
                                            {"params": self.head.parameters(), "lr": LEARNING_RATES["head"]}],
                                           weight_decay=0.01)
        total = epochs * steps_per_epoch  # cosine decay to zero over the whole run
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimiser, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
        self.parameters = adapters + list(self.head.parameters())

    def predict(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=MAX_TOKENS)  # [CLS] ... [SEP]
        rows = self.encoder(**tokens).last_hidden_state  # (B, n, 384)
        real = tokens["attention_mask"].unsqueeze(-1).to(rows.dtype)  # (B, n, 1)
        return self.head((rows * real).sum(1) / real.sum(1)).squeeze(-1)  # (B,)

    def step(self, rows: list[LabelRow]) -> float:
        self.encoder.train(), self.head.train()
        loss = (self.predict([r.text for r in rows]) - torch.tensor([r.label for r in rows])).abs().mean()
        self.optimiser.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.parameters, 1.0)
        self.optimiser.step()
        self.schedule.step()
        return loss.item()

    @torch.no_grad()
    def mae(self, rows: list[LabelRow]) -> float:
        self.encoder.eval(), self.head.eval()
        predictions = torch.cat([self.predict([r.text for r in rows[i:i + 64]]) for i in range(0, len(rows), 64)])
        return float((predictions.clamp(-3, 3) - torch.tensor([r.label for r in rows])).abs().mean())


def tune(rows: list[LabelRow], epochs: int, seed: int) -> dict:
    """The adapter of the epoch with the lowest validation MAE, with that epoch's figures."""
    train = [r for r in rows if r.split == "train" and r.text]
    valid = [r for r in rows if r.split == "valid" and r.text]
    if not train or not valid:
        raise SystemExit(f"the labels have {len(train)} train and {len(valid)} valid rows with text: both splits are needed")
    torch.manual_seed(seed)
    order = np.random.default_rng(seed)
    tuner = Tuner(epochs, math.ceil(len(train) / BATCH))
    best = None
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        shuffled = [train[i] for i in order.permutation(len(train))]
        losses = [tuner.step(shuffled[i:i + BATCH]) for i in range(0, len(shuffled), BATCH)]
        figures = {"epoch": epoch, "train_loss": float(np.mean(losses)), "valid_mae": tuner.mae(valid),
                   "seconds": time.perf_counter() - started}
        print(f"epoch {epoch}: train L1 {figures['train_loss']:.3f}, valid MAE {figures['valid_mae']:.3f} "
              f"({figures['seconds']:.0f} s)", flush=True)
        if best is None or figures["valid_mae"] < best["valid_mae"]:
            best = {**adapter.state(tuner.encoder, RANK, ALPHA), **figures, "seed": seed}
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", default="../shared/data/mosi/mosi_labels_transcripts.csv", help="label CSV with train and valid rows")
    parser.add_argument("--out", default=str(ADAPTER_PATH), help="the adapter file the text extractor loads")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    best = tune(read_labels(args.labels), args.epochs, args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(best, args.out)
    print(f"kept epoch {best['epoch']} (valid MAE {best['valid_mae']:.3f}) -> {args.out}. The text features change with it: "
          "bump TextExtractor.version, re-extract the store (python -m grf_stream.extract) and retrain.")


if __name__ == "__main__":
    main()
