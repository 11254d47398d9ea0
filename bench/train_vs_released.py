"""Training speed: our GRF in reproduction mode against the authors' released code, side by side.

The released `HierarchicalFusionModel` (github yushi2006/GRF, `src/model.py`, `config.json`) is
imported from a clone whose path you pass; nothing of it is copied here:

    git clone https://github.com/yushi2006/GRF /tmp/GRF
    python bench/train_vs_released.py --released /tmp/GRF [--samples 64] [--rounds 3] [--threads 1 2]
        [--write BENCHMARKS.md]

Both train on the same synthetic data with unaligned CMU-MOSI shapes (text 50 x 300, vision
500 x 20, audio 375 x 5; each sample's length per modality drawn uniformly between half and all
of the modality's steps), batch 32, the same sample order every epoch, L1 loss plus 0.4 x the
auxiliary head's, AdamW, gradient clipping at 1. They alternate epoch by epoch in one process:

- released: the training step of its `src/engine.py` on batches padded to the dataset's maximum
  with their lengths, as its data handler builds them;
- ours: `trainer.train.train_epoch` itself over `configs/model/grf_released.yaml` (1,126,530
  parameters, as the released model), batches from the trainer's `collate`;
- ours, no length groups: the same with `FusionBlock.group_rows = 0` (what the groups buy).

Samples per second of each epoch after a warm-up epoch; the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from report import command_line, cpu_name, write_section
from grf_stream.config import load_config
from grf_stream.data import Sample, SentimentDataset, collate
from grf_stream.model import GRF, FusionBlock
from trainer.config import TrainConfig
from trainer.train import StepsModule, train_epoch

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"text": (50, 300), "vision": (500, 20), "audio": (375, 5)}  # the released order
BATCH, AUX_WEIGHT, SEED = 32, 0.4, 0


def released_model(path: Path) -> tuple[torch.nn.Module, dict]:
    """The authors' model and config from a clone, or exit saying how to get one."""
    if not (path / "src" / "model.py").is_file() or not (path / "config.json").is_file():
        sys.exit(f"--released {path}: no src/model.py and config.json there. Get the released code with\n"
                 "    git clone https://github.com/yushi2006/GRF /tmp/GRF\n"
                 "and pass --released /tmp/GRF")
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    from src.model import HierarchicalFusionModel  # noqa: PLC0415 (the clone is known only now)

    config = json.loads((path / "config.json").read_text())
    config["order"] = list(SHAPES)
    # Its constructor reads only each modality's feature size from the data.
    info = {m: SimpleNamespace(features=torch.zeros(1, 1, d)) for m, (_, d) in SHAPES.items()}
    torch.manual_seed(SEED)
    return HierarchicalFusionModel(config, info), config


def synthetic(samples: int) -> list[Sample]:
    rng = np.random.default_rng(SEED)
    out = []
    for i in range(samples):
        features = {m: rng.standard_normal((int(rng.integers(t // 2, t + 1)), d)).astype(np.float32)
                    for m, (t, d) in SHAPES.items()}
        out.append(Sample(f"s{i}", float(rng.uniform(-3, 3)), features, {m: np.ones(len(x), bool)
                                                                        for m, x in features.items()}))
    return out


def released_tensors(samples: list[Sample]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each modality padded to the dataset's maximum, with its lengths (the released data handler's form)."""
    out = {}
    for m, (t, d) in SHAPES.items():
        x = torch.zeros(len(samples), t, d)
        for i, s in enumerate(samples):
            x[i, : len(s.features[m])] = torch.from_numpy(s.features[m])
        out[m] = (x, torch.tensor([len(s.features[m]) for s in samples]))
    return out


def released_epoch(model, config: dict, optimizer, data, labels: torch.Tensor, order: list[int]) -> None:
    """The training step of the released src/engine.py run_epoch, over `order` in batches."""
    model.train()
    for start in range(0, len(order), BATCH):
        idx = torch.tensor(order[start:start + BATCH])
        inputs = [t[idx] for m in SHAPES for t in data[m]]
        target = labels[idx].unsqueeze(1)
        optimizer.zero_grad()
        main, aux = model(*inputs)
        loss = F.l1_loss(main, target) + config["model"]["aux_loss_weight"] * F.l1_loss(aux, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=config["training"]["max_grad_norm"])
        optimizer.step()
        loss.item()  # as run_epoch's running total


class Ours:
    """Our trainer's epoch over the reproduction-mode model."""

    def __init__(self, samples: list[Sample]):
        self.config = load_config(TrainConfig, None, [
            "name=bench", *[f"model.{k}={json.dumps(v)}" for k, v in model_yaml().items()],
            f"train.aux_weight={AUX_WEIGHT}", f"optim.batch_size={BATCH}", "optim.grad_clip=1.0",
        ])
        torch.manual_seed(SEED)
        self.model = GRF(self.config.model)
        self.module = StepsModule(self.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.config.optim.lr,
                                           weight_decay=self.config.optim.weight_decay)
        self.sampler = DistributedSampler(SentimentDataset(samples), 1, 0, shuffle=True, seed=SEED)
        self.loader = DataLoader(self.sampler.dataset, BATCH, sampler=self.sampler, collate_fn=collate)

    def order(self, epoch: int) -> list[int]:
        self.sampler.set_epoch(epoch)
        return list(self.sampler)

    def epoch(self, epoch: int, group_rows: int) -> None:
        FusionBlock.group_rows = group_rows
        train_epoch(self.module, self.model, self.loader, [], self.optimizer, None, self.config, epoch, 0, "cpu")


def model_yaml() -> dict:
    import yaml  # noqa: PLC0415

    return yaml.safe_load((ROOT / "configs" / "model" / "grf_released.yaml").read_text())


def timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def measure(args, threads: int, samples: list[Sample]) -> dict[str, float]:
    """Median samples/s of each contestant, alternating epoch by epoch."""
    torch.set_num_threads(threads)
    released, config = released_model(args.released)
    rel_optimizer = torch.optim.AdamW(released.parameters(), lr=config["training"]["learning_rate"],
                                      weight_decay=config["training"]["weight_decay"])
    rel_data, labels = released_tensors(samples), torch.tensor([s.label for s in samples])
    ours, default_rows = Ours(samples), FusionBlock.group_rows
    contestants = {
        "released (yushi2006/GRF)": lambda e, o: released_epoch(released, config, rel_optimizer, rel_data, labels, o),
        "ours, no length groups": lambda e, o: ours.epoch(e, 0),
        "ours (trainer.train_epoch)": lambda e, o: ours.epoch(e, default_rows),
    }
    rates = {name: [] for name in contestants}
    for epoch in range(args.rounds + 1):  # epoch 0 warms up
        order = ours.order(epoch)
        for name, run in contestants.items():
            seconds = timed(lambda: run(epoch, order))
            print(f"threads {threads} epoch {epoch} {name}: {len(samples) / seconds:.2f} samples/s", flush=True)
            if epoch:
                rates[name].append(len(samples) / seconds)
    FusionBlock.group_rows = default_rows
    return {name: statistics.median(r) for name, r in rates.items()}


def report(results: dict[int, dict[str, float]], args) -> str:
    lines = [
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}.",
        f"Setting: {args.samples} synthetic samples of unaligned CMU-MOSI shapes (text 50x300, vision 500x20, "
        "audio 375x5; each sample's length per modality uniform between half and all steps), batch 32, the same "
        f"order for all, L1 + 0.4 auxiliary, AdamW, clipping 1.0; median of {args.rounds} epochs after a warm-up, "
        "contestants alternating epoch by epoch in one process.",
        "",
        "| threads | path | samples/s | vs released |",
        "|---|---|---|---|",
    ]
    for threads, rates in results.items():
        base = rates["released (yushi2006/GRF)"]
        lines += [f"| {threads} | {name} | {rate:.2f} | {rate / base:.2f}x |" for name, rate in rates.items()]
    speedups = {t: r["ours (trainer.train_epoch)"] / r["released (yushi2006/GRF)"] for t, r in results.items()}
    met = all(x >= 2.0 for x in speedups.values())
    lines += ["", f"Goal, at least 2.0x the released samples/s at every thread count: {'met' if met else 'NOT met'} ("
              + ", ".join(f"{x:.2f}x at {t} thread{'s' * (t > 1)}" for t, x in speedups.items()) + ")."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--released", type=Path, required=True, help="a clone of github.com/yushi2006/GRF")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs per contestant, after one warm-up")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    released_model(args.released)  # fail fast, before any data is made
    samples = synthetic(args.samples)
    results = {threads: measure(args, threads, samples) for threads in args.threads}
    body = report(results, args)
    print("\n" + body)
    if args.write:
        write_section(args.write, "train-vs-released", "Training speed: ours against the released GRF code", body,
                      command_line("train_vs_released.py"))


if __name__ == "__main__":
    main()
