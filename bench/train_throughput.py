"""Training throughput: our Ray Train trainer against a plain PyTorch loop, and the MulT baseline.

Synthetic data with the shapes of unaligned CMU-MOSI (text 50 x 300, audio 375 x 5, vision 500 x 20),
the released GRF hyperparameters, one torch thread per worker. Samples per second of the last
epoch, side by side in one run:

- trainer, 1 worker and 2 workers: `trainer.train.fit`, the code `python -m trainer.train` runs;
- plain loop: one process, the same model, data, batches and optimiser, no Ray, no DDP;
- MulT: the same plain loop over the MulT baseline (official MOSI settings).

    python bench/train_throughput.py [--samples 128] [--epochs 2] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import ray
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from report import command_line, cpu_name, write_section
from grf_stream.baselines.mult import MulT, MulTConfig
from grf_stream.config import load_config
from grf_stream.data import SentimentDataset, collate, load_split
from grf_stream.model import GRF
from trainer.config import TrainConfig
from trainer.train import fit

MOSI_UNALIGNED = "{text: %d, audio: %d, vision: %d}"


def train_config(args, workers: int, out: str) -> TrainConfig:
    return load_config(TrainConfig, None, [
        f"name=throughput_{workers}", f"output_dir={out}",
        f"data.synthetic.samples={{train: {args.samples}, valid: 8, test: 8}}",
        "data.synthetic.sizes=" + MOSI_UNALIGNED % (300, 5, 20),
        "data.synthetic.lengths=" + MOSI_UNALIGNED % (50, 375, 500),
        f"train.epochs={args.epochs}", "optim.warmup_epochs=1", f"scaling.num_workers={workers}",
    ])


def trainer_throughput(args, workers: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        result = fit(train_config(args, workers, out))
    return result.metrics["train_samples_per_s"]


def plain_loop_throughput(model: torch.nn.Module, args, config: TrainConfig) -> float:
    """The textbook loop: shuffle, forward, L1, backward, clip, AdamW; the last epoch's rate."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    samples = load_split(config.data, "train")
    loader = DataLoader(SentimentDataset(samples), config.optim.batch_size, shuffle=True, collate_fn=collate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    model.train()
    for _ in range(args.epochs):
        started = time.perf_counter()
        for batch in loader:
            out = model(batch.features, batch.masks)
            loss = F.l1_loss(out.prediction, batch.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
            optimizer.step()
        rate = len(samples) / (time.perf_counter() - started)
    return rate


def report(rates: dict[str, float], args) -> str:
    plain = rates["plain loop, GRF"]
    lines = [
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, ray {ray.__version__}; "
        "one torch thread per worker.",
        f"Setting: {args.samples} synthetic training samples of unaligned CMU-MOSI shapes (50/375/500 steps, "
        f"300/5/20 features), batch 32, GRF d=64 L=4 (released hyperparameters); rate of epoch {args.epochs} "
        "of the trainer's own timing (training pass only, not evaluation).",
        "",
        "| path | samples/s | vs plain loop |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {rate:.1f} | {rate / plain:.2f}x |" for name, rate in rates.items()]
    overhead = 1 - rates["trainer, 1 worker (Ray Train)"] / plain
    lines += ["", f"Ray Train overhead at one worker: {overhead * 100:.1f}% (goal: at most 10%)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False)
    config = train_config(args, 1, tempfile.gettempdir())
    rates = {
        "trainer, 1 worker (Ray Train)": trainer_throughput(args, 1),
        "plain loop, GRF": plain_loop_throughput(GRF(config.model), args, config),
        "trainer, 2 workers (Ray Train, DDP/gloo)": trainer_throughput(args, 2),
        "plain loop, MulT": plain_loop_throughput(MulT(MulTConfig(modalities=dict(config.model.modalities))), args, config),
    }
    ray.shutdown()
    body = report(rates, args)
    print("\n" + body)
    if args.write:
        heading = "Training throughput: Ray Train against a plain loop"
        write_section(args.write, "train-throughput", heading, body, command_line("train_throughput.py"))


if __name__ == "__main__":
    main()
