"""Give a trained GRF the read-out of (10): the text ridge beside its head, its weight chosen on validation.

    python -m trainer.readout --checkpoint runs/mosi_live/checkpoints/best.pt --out readout.pt
    python -m grf_stream.default_model readout.pt      # to ship it

The read-out is the README's ridge floor: a ridge regression on the mean-pooled features of the
modality (grf_stream/baselines/ridge.py, fitted on the training split, its penalty chosen by
validation MAE); rho_0, what it reads before the first phrase, is the training labels' mean. Each
weight lam of --weights is scored on the validation split the way training selects its checkpoints
(train.select=live): the mean of the segment-policy MAE and the live replay's phrase and held MAE
(trainer.live_report). The best is written; the GRF's own weights stay as they were. Nothing here
reads the test split.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from grf_stream.baselines.ridge import Ridge, fit_on_validation, mean_pooled
from grf_stream.checkpoint import load_model, save_checkpoint
from grf_stream.data import DataConfig, DistractorConfig, Sample, evaluation_form, load_distractors, load_split
from grf_stream.model import GRF
from trainer.evaluate import evaluate_model
from trainer.live_report import live_metrics, live_score, live_streams, replay

WEIGHTS = (0.25, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9)


def with_readout(model: GRF, modality: str, ridge: Ridge, start: float, weight: float) -> GRF:
    """A copy of `model` whose predictions blend in `ridge`'s reading of the latest window of `modality`."""
    config = dataclasses.replace(model.config, readout=modality, readout_weight=weight)
    blended = GRF(config).eval()
    missing, unexpected = blended.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(name.startswith("readout.") for name in missing), (missing, unexpected)
    with torch.no_grad():  # y = (x - mean) w + b as one linear map of x
        blended.readout.linear.weight.copy_(torch.as_tensor(ridge.weights, dtype=torch.float32)[None])
        blended.readout.linear.bias.fill_(ridge.bias - float(ridge.mean @ ridge.weights))
        blended.readout.start.fill_(start)
    return blended


def validation_score(model: GRF, with_media: list[Sample], streams) -> dict[str, float]:
    """What training's live selection minimises, and its parts, on the validation split."""
    # The model's own order, as training's validation runs it (the default's: audio, video, then the phrase).
    segment = evaluate_model(model, with_media, model.config.order, split="valid").metrics["mae"]
    live = live_metrics(streams, replay(model, streams))
    parts = {"segment_mae": segment, "phrase_mae": live["phrase_mae"], "held_mae": live["held_mae"],
             "jitter": live["jitter"], "flips_per_10min": live["flips_per_10min"]}
    return {"score": live_score(segment, live), **parts}


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="a trained GRF, e.g. runs/mosi_live/checkpoints/best.pt")
    parser.add_argument("--out", type=Path, required=True, help="where the checkpoint with the read-out goes")
    parser.add_argument("--store", default="runs/mosi_text", help="the CMU-MOSI text feature store")
    parser.add_argument("--media", default="../shared/data/media", help="the recordings of the audio and video windows")
    parser.add_argument("--modality", default="text", help="the modality read out (default: the transcript)")
    parser.add_argument("--weights", type=blend_weight, nargs="+", default=WEIGHTS,
                        help="the lam of (10) to choose from, each in (0, 1]")
    return parser


def blend_weight(text: str) -> float:
    """A --weights item: the read-out's share of a prediction."""
    try:
        weight = float(text)
    except ValueError:
        weight = None
    if weight is None or not 0 < weight <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a weight in (0, 1]: 1 is the read-out alone, e.g. 0.75")
    return weight


def scored_weights(model: GRF, args: argparse.Namespace, ridge: Ridge, start: float, with_media: list[Sample],
                   streams) -> dict[float, tuple[GRF, dict[str, float]]]:
    """Each weight of --weights: the blended model and its validation score, a table row printed as it comes."""
    print("| lam | score | segment MAE | live phrase MAE | held MAE | jitter | flips / 10 min |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    scored = {}
    for weight in sorted(set(args.weights)):
        blended = with_readout(model, args.modality, ridge, start, weight)
        s = validation_score(blended, with_media, streams)
        scored[weight] = blended, s
        print(f"| {weight:g} | {s['score']:.4f} | {s['segment_mae']:.3f} | {s['phrase_mae']:.3f} | "
              f"{s['held_mae']:.3f} | {s['jitter']:.3f} | {s['flips_per_10min']:.2f} |", flush=True)
    return scored


def main(argv: list[str] | None = None) -> None:
    args = arguments().parse_args(argv)
    model, spec, payload = load_model(args.checkpoint)
    if model.config.readout is not None:
        raise SystemExit(f"{args.checkpoint} has a read-out already: give the checkpoint it was fitted onto")
    if args.modality not in model.config.modalities:
        raise SystemExit(f"--modality {args.modality}: this model fuses {list(model.config.modalities)}")
    data = DataConfig(format="store", path=args.store, distractors=DistractorConfig(media=args.media))
    stored = {split: load_split(data, split) for split in ("train", "valid")}
    ridge = fit_on_validation(*(mean_pooled(stored[s], args.modality) for s in ("train", "valid")))
    start = float(np.mean([s.label for s in stored["train"]]))
    print(f"{args.checkpoint} on {args.store} [valid]: ridge alpha {ridge.alpha:g} (by validation MAE), "
          f"rho_0 {start:+.3f}\n")
    scored = scored_weights(model, args, ridge, start, evaluation_form(stored["valid"], load_distractors(data)),
                            live_streams(args.store, "valid", args.media))
    best = min(scored, key=lambda w: scored[w][1]["score"])
    blended, score = scored[best]
    metrics = {**payload.get("metrics", {}), "readout_weight": best, "readout_alpha": ridge.alpha,
               **{f"readout_valid_{k}": v for k, v in score.items()}}
    save_checkpoint(args.out, blended, spec, payload.get("run_config"), metrics)
    print(f"\nlam {best:g} (validation score {score['score']:.4f}) -> {args.out}")


if __name__ == "__main__":
    main()
