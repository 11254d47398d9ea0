"""Evaluate a checkpoint: the field's metrics table for one split, as text and JSON.

    python -m trainer.evaluate runs/grf/checkpoints/best.pt --split test
    python -m trainer.evaluate CHECKPOINT --data data/mosi_data_noalign.pkl --format mult --orders all
    python -m trainer.evaluate grf_stream/models/default.pt --data runs/mosi_text --orders text,audio,video

A run trained with distractors (data.distractors) is evaluated with them, as in training: every
sample lacking audio or video gets the same fixed windows; --no-distractors evaluates the stored
modalities alone, --media DIR takes the recordings from another folder.
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from grf_stream.checkpoint import load_model
from grf_stream.config import from_dict
from grf_stream.data import (DataConfig, Sample, SentimentDataset, check_sizes, collate, evaluation_form,
                             load_distractors, load_split, with_absent)
from grf_stream.metrics import format_table, sentiment_metrics
from grf_stream.model import GRF
from trainer.steps import fusion_steps


@dataclass
class Evaluation:
    """Predictions of one pass over a split, with what TensorBoard shows of it."""

    predictions: np.ndarray  # (N,)
    labels: np.ndarray  # (N,)
    step_predictions: np.ndarray  # (N, n) y_k after each step
    contexts: np.ndarray  # (N, n, d) h_k after each step
    gates: np.ndarray  # (N, n-1, d)
    step_modalities: list[str]  # modality of each step
    metrics: dict[str, float]


@torch.no_grad()
def evaluate_model(
    model: GRF,
    samples: list[Sample],
    order: list[str],
    window_steps: dict[str, int] | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    split: str = "evaluation",
) -> Evaluation:
    """Run the model in eval mode over every sample; the metrics of its final predictions. A
    non-finite prediction is an error naming the split, the batch and its samples."""
    was_training = model.training
    model.eval()
    loader = DataLoader(SentimentDataset(samples), batch_size=batch_size, shuffle=False, collate_fn=collate)
    predictions, labels, step_predictions, contexts, gates, modalities = [], [], [], [], [], []
    for index, batch in enumerate(loader):
        batch = batch.to(device)
        steps = fusion_steps(batch, order, window_steps or {})
        out = model.fuse(steps)
        if not torch.isfinite(out.prediction).all():
            bad = [batch.ids[i] for i in torch.nonzero(~torch.isfinite(out.prediction)).flatten().tolist()]
            raise FloatingPointError(f"{split} batch {index + 1}: non-finite predictions for {', '.join(bad[:5])}: "
                                     "check those samples' features for NaN or inf, and the checkpoint's weights")
        predictions.append(out.prediction.cpu())
        labels.append(batch.labels.cpu())
        step_predictions.append(out.step_predictions.cpu())
        contexts.append(out.contexts.cpu())
        gates.append(out.gates.cpu())
        modalities = [m for m, _, _ in steps]
    model.train(was_training)
    predictions, labels = torch.cat(predictions).numpy(), torch.cat(labels).numpy()
    # Windowed steps vary in number between batches; keep per-step tensors only when they agree.
    same_steps = len({c.shape[1] for c in contexts}) == 1
    return Evaluation(
        predictions,
        labels,
        torch.cat(step_predictions).numpy() if same_steps else np.zeros((len(labels), 0)),
        torch.cat(contexts).numpy() if same_steps else np.zeros((len(labels), 0, model.config.d_model)),
        torch.cat(gates).numpy() if same_steps else np.zeros((len(labels), 0, model.config.d_model)),
        modalities if same_steps else [],
        sentiment_metrics(predictions, labels),
    )


def orders_to_evaluate(model: GRF, which: str) -> list[list[str]]:
    """default, all (every permutation), or one order written a,b,c."""
    if which == "default":
        return [model.config.order]
    if not model.config.share_block:
        raise SystemExit(f"--orders {which} needs a shared-block model: per-step blocks are tied to one order")
    if which == "all":
        return [list(p) for p in itertools.permutations(model.config.order)]
    order = which.split(",")
    if sorted(order) != sorted(model.config.order):
        raise SystemExit(f"--orders {which}: name each of {','.join(model.config.order)} once, comma-separated")
    return [order]


def run_data(payload: dict, args: argparse.Namespace) -> DataConfig:
    """The data the run trained on, with the command line's replacements."""
    run = payload.get("run_config") or {}
    data = from_dict(DataConfig, run.get("data", {"format": args.format or "synthetic"}))
    if args.data or args.format:
        data = replace(data, path=args.data or data.path, format=args.format or data.format)
    if args.media:
        data.distractors.media = args.media
    if args.no_distractors:
        data.distractors.media = ""
    elif data.distractors.media and not Path(data.distractors.media).is_dir():
        raise SystemExit(f"the run's distractor recordings {data.distractors.media} are not here: pass --media DIR "
                         f"(the folder it trained with, e.g. ../shared/data/media) or --no-distractors")
    return data


def load_evaluation_split(data: DataConfig, split: str, model: GRF, no_distractors: bool) -> list[Sample]:
    samples = evaluation_form(load_split(data, split), load_distractors(data))
    if no_distractors:  # the model's other modalities are absent, as a stream that sends none of them
        samples = with_absent(samples, model.config.modalities)
    check_sizes(samples, model.config.modalities, f"{data.path or data.format} [{split}]")
    return samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", help="dataset file or store directory (default: the one the run trained on)")
    parser.add_argument("--format", choices=("mult", "mmsa", "store", "synthetic"), help="format of --data")
    parser.add_argument("--split", default="test", choices=("train", "valid", "test"))
    parser.add_argument("--orders", default="default",
                        help="default (the model's order), all (every order: the order study) or one order, e.g. text,audio,video")
    parser.add_argument("--media", help="folder of the distractor recordings (default: the run's)")
    parser.add_argument("--no-distractors", action="store_true", help="evaluate the stored modalities alone")
    parser.add_argument("--json", type=Path, help="also write the metrics here")
    args = parser.parse_args(argv)

    model, _, payload = load_model(args.checkpoint)
    data = run_data(payload, args)
    samples = load_evaluation_split(data, args.split, model, args.no_distractors)
    window_steps = (payload.get("run_config") or {}).get("train", {}).get("window_steps", {})

    rows = {}
    for order in orders_to_evaluate(model, args.orders):
        rows["-".join(order)] = evaluate_model(model, samples, order, window_steps).metrics
    with_media = f" with distractors from {data.distractors.media}" if data.distractors.media else ""
    print(f"{args.checkpoint} on {data.path or data.format} [{args.split}]{with_media}, {len(samples)} samples")
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
