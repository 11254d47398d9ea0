"""What a training run shows in TensorBoard (written by the first worker only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from trainer.evaluate import Evaluation


class TrainingBoard:
    """Losses, every metric per split, the learning rate, gates per step and modality, contexts."""

    def __init__(self, log_dir: Path, start_epoch: int):
        # purge_step drops events a resumed run is about to write again.
        self.writer = SummaryWriter(str(log_dir), purge_step=start_epoch or None)

    def epoch(self, epoch: int, train_loss: float, lr: float, samples_per_s: float,
              train_metrics: dict[str, float], evaluations: dict[str, Evaluation],
              live: dict[str, float] | None = None) -> None:
        self.writer.add_scalar("loss/train", train_loss, epoch)
        self.writer.add_scalar("lr", lr, epoch)
        self.writer.add_scalar("throughput/train_samples_per_s", samples_per_s, epoch)
        metrics = {"train": train_metrics, **{split: e.metrics for split, e in evaluations.items()}}
        for split, values in metrics.items():
            for name, value in values.items():
                self.writer.add_scalar(f"{name}/{split}", value, epoch)
        for name, value in (live or {}).items():  # the live replay of the validation videos
            self.writer.add_scalar(f"live_{name}/valid", value, epoch)
        self.gates(epoch, evaluations["valid"])
        self.writer.flush()

    def gates(self, epoch: int, evaluation: Evaluation) -> None:
        """Mean update gate z per fusion step and per modality, and their histograms."""
        per_modality: dict[str, list[np.ndarray]] = {}
        for k, modality in enumerate(evaluation.step_modalities[1:]):
            z = evaluation.gates[:, k]  # (N, d)
            self.writer.add_scalar(f"gate_mean/step{k + 2}_{modality}", float(z.mean()), epoch)
            self.writer.add_histogram(f"gate/step{k + 2}_{modality}", z, epoch)
            per_modality.setdefault(modality, []).append(z)
        for modality, zs in per_modality.items():
            self.writer.add_scalar(f"gate_mean/{modality}", float(np.mean(zs)), epoch)

    def contexts(self, epoch: int, evaluation: Evaluation) -> None:
        """h_k of every step in the embedding projector, labelled by sentiment sign.

        Colour by `sign` to see the classes separate step by step, as the paper's figure does.
        """
        signs = ["positive" if y > 0 else "negative" if y < 0 else "neutral" for y in evaluation.labels]
        for k, modality in enumerate(evaluation.step_modalities):
            self.writer.add_embedding(
                torch.from_numpy(evaluation.contexts[:, k]),
                metadata=[[s, f"{y:.2f}"] for s, y in zip(signs, evaluation.labels)],
                metadata_header=["sign", "label"],
                tag=f"context_h{k + 1}_{modality}",
                global_step=epoch,
            )
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
