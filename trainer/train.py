"""Train GRF with Ray Train: DDP over `scaling.num_workers` workers (gloo on CPU, NCCL on GPU).

    python -m trainer.train --config configs/train/synthetic_tiny.yaml [key=value ...] [--resume]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m trainer.train --config configs/train/synthetic_tiny.yaml output_dir=$PWD/runs

Outputs go to <output_dir>/<name>/: checkpoints/best.pt (lowest validation MAE) and last.pt
(what --resume continues from), tensorboard/, metrics.json. Every worker evaluates the full
validation and test splits, so all of them take the same early-stopping decision.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler

from grf_stream.checkpoint import load_model, read_checkpoint, save_checkpoint
from grf_stream.config import from_dict, load_config, to_dict
from grf_stream.data import (Distractors, FeatureStore, Sample, SentimentDataset, check_sizes, collate, evaluation_form,
                             feature_spec, load_distractors, load_split, pair_split)
from grf_stream.data.streams import MediaTrack, StreamBatch, videos, whole_video
from grf_stream.metrics import sentiment_metrics
from grf_stream.model import GRF, GRFConfig
from grf_stream.spec import SPLITS
from trainer.board import TrainingBoard
from trainer.config import TrainConfig
from trainer.evaluate import Evaluation, evaluate_model
from trainer.live_report import live_metrics, live_score, replay
from trainer.steps import (batch_order, batch_windows, fusion_steps, hide_modalities, learning_rate, loss, stream_batch,
                           stream_loss)


class StepsModule(nn.Module):
    """GRF.fuse as a forward, so DDP sees every call (it syncs gradients around forward)."""

    def __init__(self, model: GRF):
        super().__init__()
        self.model = model

    def forward(self, steps):
        return self.model.fuse(steps)


@dataclass
class Progress:
    """Where a run stands; saved in last.pt so --resume continues exactly."""

    epoch: int = 0  # the next epoch to run
    best_mae: float = float("inf")  # the best selection score (validation MAE unless train.select=live)
    bad_epochs: int = 0


def run_dir(config: TrainConfig) -> Path:
    return Path(config.output_dir) / config.name


@dataclass
class RunData:
    """A run's splits as stored, and as trained and evaluated (with distractor windows, if any)."""

    stored: dict[str, list[Sample]]
    distractors: Distractors | None
    config: TrainConfig

    def __post_init__(self) -> None:
        self.evaluated = {split: evaluation_form(s, self.distractors) for split, s in self.stored.items()}
        for split, samples in self.evaluated.items():
            check_sizes(samples, self.config.model.modalities, f"{self.config.data.path or self.config.data.format} [{split}]")
        live = self.config.train.streams.batches > 0 or self.config.train.select == "live"
        self.track = MediaTrack(self.distractors) if live else None
        self.videos = {split: videos(FeatureStore.open(self.config.data.path), self.stored[split])
                       for split in ("train", "valid")} if live else {}
        self.live_valid = [whole_video(v, u, self.track, self.config.train.streams.window_s)
                           for v, u in self.videos.get("valid", {}).items()]

    def train(self, epoch: int) -> list[Sample]:
        """The training split of one epoch: new distractor windows every epoch, the same on resume."""
        if self.distractors is None:
            return self.stored["train"]
        distractors = self.config.data.distractors
        return pair_split(self.stored["train"], self.distractors, distractors.p, self.config.train.seed, epoch,
                          distractors.vary)

    def stream_batches(self, epoch: int, rank: int, utterance_batches: int) -> list[StreamBatch]:
        """This worker's stream batches of one epoch; they depend only on (seed, epoch, rank)."""
        streams = self.config.train.streams
        rng = np.random.default_rng([self.config.train.seed, epoch, rank, 1])
        count = round(streams.batches * utterance_batches)
        vary = self.config.data.distractors.vary
        return [stream_batch(self.videos["train"], self.track, streams, rng, vary) for _ in range(count)]


def load_data(config: TrainConfig) -> RunData:
    return RunData({split: load_split(config.data, split) for split in SPLITS}, load_distractors(config.data), config)


def set_feature_statistics(model: GRF, samples: list[Sample]) -> None:
    """Measure model.feature_norm's statistics on the real rows of the training samples."""
    for m, encoder in model.encoders.items():
        rows = np.concatenate([s.features[m][s.masks[m]] for s in samples])
        if len(rows) < 2:
            raise ValueError(f"model.feature_norm: the training data has no {m} rows to measure; "
                             f"set model.feature_norm=false or give the data {m} features")
        encoder.norm.set_statistics(torch.from_numpy(rows))


def seed_epoch(seed: int, epoch: int, rank: int) -> torch.Generator:
    """Randomness that depends only on (seed, epoch, rank): a resumed run repeats it exactly."""
    torch.manual_seed(seed * 1_000_003 + epoch * 1_009 + rank)
    return torch.Generator().manual_seed(seed * 7_919 + epoch * 31 + rank)


def train_epoch(module, model, loader, streams: list[StreamBatch], optimizer, average, config: TrainConfig,
                epoch: int, rank: int, device):
    """One pass over this worker's shard, its stream batches spread evenly between the utterance
    batches; (mean loss, metrics of the training predictions of the utterance batches)."""
    regime, generator = config.train, seed_epoch(config.train.seed, epoch, rank)
    loader.sampler.set_epoch(epoch)
    module.train()
    losses, predictions, labels = [], [], []
    next_stream = 0
    for index, batch in enumerate(loader):
        batch = batch.to(device)
        if regime.modality_dropout:
            batch.masks = hide_modalities(batch.masks, regime.modality_dropout, generator)
        order = batch_order(config.model.order, regime, regime.seed, epoch, index)
        out = module(fusion_steps(batch, order, batch_windows(regime, regime.seed, epoch, index)))
        where = f"epoch {epoch + 1}, training batch {index + 1} (samples {', '.join(batch.ids[:3])}, ...)"
        losses.append(optimise(loss(out, batch.labels, regime), model, optimizer, average, config, where))
        predictions.append(out.prediction.detach().cpu())
        labels.append(batch.labels.cpu())
        while next_stream < (index + 1) * len(streams) // len(loader):  # all of them by the last batch
            stream = streams[next_stream].to(device)
            where = f"epoch {epoch + 1}, stream batch {next_stream + 1}"
            losses.append(optimise(stream_loss(module(stream.steps), stream, regime.streams), model, optimizer,
                                   average, config, where))
            next_stream += 1
    return float(np.mean(losses)), sentiment_metrics(torch.cat(predictions), torch.cat(labels))


def optimise(batch_loss: torch.Tensor, model: GRF, optimizer, average, config: TrainConfig, where: str) -> float:
    """One optimiser step on a batch's loss; the loss as a number. A non-finite loss stops the run:
    a step on it would spoil every weight, and every checkpoint after it."""
    if not torch.isfinite(batch_loss):
        raise FloatingPointError(f"{where}: the loss is {batch_loss.item()}. Check the training data for NaN or inf "
                                 "features and labels, then lower optim.lr or set optim.grad_clip")
    optimizer.zero_grad(set_to_none=True)
    batch_loss.backward()
    if config.optim.grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
    optimizer.step()
    if average is not None:
        average.update_parameters(model)
    return batch_loss.item()


def weight_average(model: GRF, decay: float) -> AveragedModel | None:
    """The exponential moving average of the weights (optim.ema), or None when it is off."""
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def served(model: GRF, average: AveragedModel | None) -> GRF:
    """The weights that are evaluated, chosen and saved: the average when there is one."""
    return average.module if average is not None else model


# model settings that hold no weight: a fine-tune may change them
FINE_TUNABLE = ("dropout", "gate_floor", "gate_floors")


def weight_settings(model: GRFConfig) -> dict:
    """A model's settings less FINE_TUNABLE."""
    return {k: v for k, v in to_dict(model).items() if k not in FINE_TUNABLE}


def starting_weights(config: TrainConfig) -> dict:
    """The weights (feature statistics included) of train.init_from, for a fine-tuning run."""
    payload = read_checkpoint(config.train.init_from)
    # from_dict fills in the defaults of settings a checkpoint older than them lacks
    if weight_settings(from_dict(GRFConfig, payload["model_config"])) != weight_settings(config.model):
        raise ValueError(f"train.init_from={config.train.init_from} holds another model "
                         f"({payload['model_config']}); fine-tune it with the same model: settings")
    return payload["model_state"]


def trained_parameters(model: GRF, prefixes: list[str]) -> list[torch.nn.Parameter]:
    """The parameters named by train.tune_only (all without it); the others are frozen."""
    if not prefixes:
        return list(model.parameters())
    names = [name for name, _ in model.named_parameters()]
    unmatched = [p for p in prefixes if not any(n.startswith(p) for n in names)]
    if unmatched:
        raise ValueError(f"train.tune_only: {unmatched[0]!r} names no parameter of this model; "
                         f"its parameters are {sorted({n.rsplit('.', 1)[0] for n in names})}")
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(any(name.startswith(p) for p in prefixes))
    return [p for p in model.parameters() if p.requires_grad]


def restore(path: str | None, model: GRF, optimizer, average: AveragedModel | None) -> Progress:
    if not path:
        return Progress()
    payload = read_checkpoint(path)
    state = payload["training_state"]
    model.load_state_dict(state["model"] if "model" in state else payload["model_state"])
    optimizer.load_state_dict(state["optimizer"])
    if average is not None:
        average.load_state_dict(state["average"])
    return Progress(**state["progress"])


def evaluate_epoch(judged: GRF, data, config: TrainConfig, device) -> tuple[dict, dict, float]:
    """The epoch's weights on valid and test, live on the valid videos, and the score that selects them."""
    evaluations = {split: evaluate(judged, data.evaluated[split], config, device, split) for split in ("valid", "test")}
    live = live_metrics(data.live_valid, replay(judged, data.live_valid, device)) if data.live_valid else {}
    return evaluations, live, selection_score(evaluations["valid"].metrics, live, config)


def flat_metrics(evaluations: dict, live: dict) -> dict[str, float]:
    return {**{f"{s}_{k}": v for s, e in evaluations.items() for k, v in e.metrics.items()},
            **{f"valid_live_{k}": v for k, v in live.items()}}


def train_func(loop_config: dict) -> None:
    """Ray Train's per-worker function: the whole training loop."""
    config = from_dict(TrainConfig, loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config.scaling.cpus_per_worker)  # more threads than cores slows torch badly
    device = ray.train.torch.get_device()
    data = load_data(config)

    torch.manual_seed(config.train.seed)
    model = GRF(config.model)
    first_epoch = data.train(0)
    if config.model.feature_norm:
        set_feature_statistics(model, first_epoch)
    if config.train.init_from:
        model.load_state_dict(starting_weights(config))
    trained = trained_parameters(model, config.train.tune_only)
    optimizer = torch.optim.AdamW(trained, lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    average = weight_average(model, config.optim.ema)
    progress = restore(loop_config.get("resume_from"), model, optimizer, average)
    # Wraps in DDP when there are several workers; missing modalities leave some weights unused.
    module = ray.train.torch.prepare_model(StepsModule(model), parallel_strategy_kwargs={"find_unused_parameters": True})
    sampler = DistributedSampler(SentimentDataset(first_epoch), world, rank, shuffle=True, seed=config.train.seed)
    loader = DataLoader(sampler.dataset, config.optim.batch_size, sampler=sampler, collate_fn=collate)

    board = TrainingBoard(run_dir(config) / "tensorboard", progress.epoch) if rank == 0 else None
    spec = feature_spec(config.data, config.model.modalities, data.distractors)
    epochs_this_run = 0
    while progress.epoch < config.train.epochs and progress.bad_epochs < config.train.patience:
        started, epoch = time.perf_counter(), progress.epoch
        lr = learning_rate(epoch, config.optim, config.train.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sampler.dataset.samples = data.train(epoch)
        streams = data.stream_batches(epoch, rank, len(loader))
        train_loss, train_metrics = train_epoch(module, model, loader, streams, optimizer, average, config, epoch, rank,
                                                device)
        samples_per_s = len(sampler.dataset) / (time.perf_counter() - started)  # all workers together
        evaluations, live, score = evaluate_epoch(served(model, average), data, config, device)
        improved = score < progress.best_mae
        progress = Progress(epoch + 1, min(progress.best_mae, score), 0 if improved else progress.bad_epochs + 1)
        report = {"epoch": epoch, "train_loss": train_loss, "train_samples_per_s": samples_per_s, "score": score,
                  **flat_metrics(evaluations, live)}
        checkpoint = None
        if rank == 0:
            record = EpochRecord(epoch, lr, train_loss, train_metrics, samples_per_s, evaluations, improved, live)
            checkpoint = save_and_log(record, model, optimizer, average, progress, spec, config, board)
            print_epoch(record, config, time.perf_counter() - started)
        ray.train.report(report, checkpoint=checkpoint)
        epochs_this_run += 1
        if config.train.stop_after and epochs_this_run >= config.train.stop_after:
            break
    if rank == 0:
        finish(config, run_dir(config), board, data, device)


def selection_score(valid: dict[str, float], live: dict[str, float], config: TrainConfig) -> float:
    """What the best checkpoint minimises: validation MAE, or with select=live its mean with the
    live replay's phrase and held MAE on the validation videos."""
    return live_score(valid["mae"], live) if config.train.select == "live" else valid["mae"]


@dataclass
class EpochRecord:
    """What one epoch produced, for checkpoints, TensorBoard and the console."""

    epoch: int
    lr: float
    train_loss: float
    train_metrics: dict[str, float]
    samples_per_s: float
    evaluations: dict[str, Evaluation]
    improved: bool
    live: dict[str, float]  # the live replay of the validation videos; empty without streams


def save_and_log(record: EpochRecord, model, optimizer, average, progress: Progress, spec, config: TrainConfig,
                 board: TrainingBoard) -> ray.train.Checkpoint:
    """best.pt when validation improved, last.pt always (the served weights: the average when there
    is one; the raw weights and the average ride along to resume from), TensorBoard; the checkpoint
    for Ray."""
    folder, run_config = run_dir(config) / "checkpoints", to_dict(config)
    metrics = {"epoch": record.epoch, "train_loss": record.train_loss, **record.evaluations["valid"].metrics,
               **{f"live_{k}": v for k, v in record.live.items()}}
    if record.improved:
        save_checkpoint(folder / "best.pt", served(model, average), spec, run_config, metrics)
    training_state = {"optimizer": optimizer.state_dict(), "progress": vars(progress)}
    if average is not None:
        training_state |= {"model": model.state_dict(), "average": average.state_dict()}
    save_checkpoint(folder / "last.pt", served(model, average), spec, run_config, metrics, training_state)
    board.epoch(record.epoch, record.train_loss, record.lr, record.samples_per_s, record.train_metrics,
                record.evaluations, record.live)
    # Ray keeps a copy in its run storage (shared storage on a cluster) and hands it to fit()'s result.
    return ray.train.Checkpoint.from_directory(str(folder))


def evaluate(model: GRF, samples: list[Sample], config: TrainConfig, device, split: str) -> Evaluation:
    return evaluate_model(model, samples, config.model.order, config.train.window_steps,
                          config.optim.batch_size * 2, device, split)


def print_epoch(record: EpochRecord, config: TrainConfig, seconds: float) -> None:
    valid, test, live = record.evaluations["valid"].metrics, record.evaluations["test"].metrics, record.live
    live_text = (f"valid live phrase {live['phrase_mae']:.4f} held {live['held_mae']:.4f} "
                 f"jitter {live['jitter']:.3f}  " if live else "")
    print(
        f"epoch {record.epoch + 1:>3}/{config.train.epochs}  loss {record.train_loss:.4f}  "
        f"valid mae {valid['mae']:.4f} corr {valid['corr']:.3f} acc2 {valid['acc2_non0']:.3f}  {live_text}"
        f"test mae {test['mae']:.4f}  lr {record.lr:.1e}  {record.samples_per_s:.1f} samples/s  "
        f"{seconds:.1f}s{'  *best' if record.improved else ''}",
        flush=True,
    )


def finish(config: TrainConfig, out_dir: Path, board: TrainingBoard, data: RunData, device) -> None:
    """The best checkpoint on every split; its contexts per step go to the embedding projector."""
    best = out_dir / "checkpoints" / "best.pt"
    if not best.exists():  # a stop_after run that has not yet improved on anything
        board.close()
        return
    model, _, payload = load_model(best, device)
    results = {split: evaluate(model, data.evaluated[split], config, device, split) for split in SPLITS}
    board.contexts(payload["metrics"].get("epoch", 0), results["test"])
    board.close()
    summary = {split: r.metrics for split, r in results.items()}
    if data.live_valid:
        summary["valid_live"] = live_metrics(data.live_valid, replay(model, data.live_valid, device))
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")


def resolve_paths(config: TrainConfig) -> TrainConfig:
    """Absolute paths: Ray workers (and `ray job submit`) may run in another directory."""
    config.output_dir = str(Path(config.output_dir).resolve())
    if config.data.path:
        config.data.path = str(Path(config.data.path).resolve())
    if config.data.distractors.media:
        config.data.distractors.media = str(Path(config.data.distractors.media).resolve())
    if config.train.init_from:
        config.train.init_from = str(Path(config.train.init_from).resolve())
    return config


def checkpoint_to_resume(config: TrainConfig, resume: bool) -> str | None:
    last = run_dir(config) / "checkpoints" / "last.pt"
    if resume:
        if not last.exists():
            raise SystemExit(f"--resume: no {last} to resume from; drop --resume to start a new run")
        return str(last)
    if last.exists():
        raise SystemExit(f"{run_dir(config)} already holds a run: pass --resume to continue it, "
                         f"or name=... / output_dir=... for a new one")
    return None


def fit(config: TrainConfig, resume_from: str | None = None) -> ray.train.Result:
    """Run `train_func` on `config.scaling.num_workers` Ray Train workers; Ray must be initialised."""
    trainer = ray.train.torch.TorchTrainer(
        train_func,
        train_loop_config={"config": to_dict(config), "resume_from": resume_from},
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.scaling.num_workers,
            use_gpu=config.scaling.use_gpu,
            resources_per_worker={"CPU": config.scaling.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=config.name,
            storage_path=str(run_dir(config) / "ray"),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
    )
    return trainer.fit()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a YAML file of configs/train/")
    parser.add_argument("--resume", action="store_true", help="continue <output_dir>/<name> from its last.pt")
    parser.add_argument("--address", help="Ray cluster to join (default: the job's cluster, else a local one)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4 train.epochs=20")
    args = parser.parse_args(argv)
    config = resolve_paths(load_config(TrainConfig, args.config, args.overrides))
    resume_from = checkpoint_to_resume(config, args.resume)
    if config.train.init_from:
        try:  # here, before Ray starts: a worker's error would come back buried in a traceback
            starting_weights(config)
            trained_parameters(GRF(config.model), config.train.tune_only)
        except (FileNotFoundError, ValueError) as error:
            raise SystemExit(str(error)) from None
    if not ray.is_initialized():
        ray.init(address=args.address)
    fit(config, resume_from)
    metrics = run_dir(config) / "metrics.json"
    print(f"outputs in {run_dir(config)}")
    if metrics.exists():
        print(metrics.read_text())


if __name__ == "__main__":
    main(sys.argv[1:])
