"""The README's CMU-MOSI table: a GRF checkpoint on the test split, the ridge floor, MulT's result.

    python -m trainer.mosi_report                       # the packaged model, runs/mosi_text, ../shared/data/media
    python -m trainer.mosi_report --checkpoint runs/mosi_text/checkpoints/best.pt --json report.json
    python -m trainer.mosi_report --checkpoint CKPT --split valid   # to choose between runs
    python -m trainer.mosi_report --gate-floors audio=0.45 video=0.45   # the checkpoint with other gate floors

Every row but MulT's is measured here on the standard test split (686 utterances):
- GRF as served with the segment policy: audio, then video, then text, one step each. In a stream
  the transcript line arrives when the phrase ends, after its audio and video; the audio and
  video are real recordings unrelated to the utterance (the fixed evaluation windows of
  data/distractors.py).
- GRF as served with the window policy (the client's default): the same audio and video in 1 s
  steps, then the phrase.
- GRF with text first, read after the text step and again after the audio and video steps: what
  the unrelated audio and video do to a prediction already made.
- GRF on text alone.
- Ridge regression on the mean-pooled features of the same text extractor (the floor).
- MulT, text+audio+video, unaligned: quoted from its paper, not measured here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from grf_stream.baselines.ridge import fit_on_validation, mean_pooled
from grf_stream.checkpoint import load_model
from grf_stream.config import ConfigError
from grf_stream.data import DataConfig, DistractorConfig, FeatureSpec, Sample, evaluation_form, load_distractors, load_split
from grf_stream.default_model import SHIPPED
from grf_stream.metrics import sentiment_metrics
from grf_stream.model import GRF
from trainer.evaluate import evaluate_model

WINDOW_S = 1.0  # the client's default --window-s
MULT_PUBLISHED = {"mae": 0.889, "corr": 0.686, "acc7": 0.391, "acc2_non0": 0.811, "f1_non0": 0.810}
MULT_SOURCE = "Tsai et al., Multimodal Transformer for Unaligned Multimodal Language Sequences, ACL 2019 (CMU-MOSI, unaligned)"
COLUMNS = (("MAE", "mae"), ("Corr", "corr"), ("Acc-7", "acc7"), ("Acc-2 has-0", "acc2_has0"),
           ("F1 has-0", "f1_has0"), ("Acc-2 non-0", "acc2_non0"), ("F1 non-0", "f1_non0"))


def grf_rows(model: GRF, spec: FeatureSpec, text_only: list[Sample], with_media: list[Sample]):
    """The GRF rows of the table, and how far the audio and video steps move its predictions."""
    served = evaluate_model(model, with_media, ["audio", "video", "text"])
    one_second = {m: round(spec.modalities[m].rate * WINDOW_S) for m in ("audio", "video")}
    windowed = evaluate_model(model, with_media, ["audio", "video", "text"], one_second)
    text_first = evaluate_model(model, with_media, ["text", "audio", "video"])
    alone = evaluate_model(model, text_only, ["text"])
    labels, after_text = text_first.labels, text_first.step_predictions[:, 0]
    return {
        "GRF served, segment policy: audio, video, then text": served.metrics,
        "GRF served, window policy: 1 s audio and video steps, then text": windowed.metrics,
        "GRF text first: after the text step": sentiment_metrics(after_text, labels),
        "GRF text first: after audio and video too": text_first.metrics,
        "GRF, text alone": alone.metrics,
    }, {
        "mean |change| from the audio and video steps": float(np.mean(np.abs(text_first.predictions - after_text))),
        "sign changes from the audio and video steps": int(np.sum(np.sign(text_first.predictions) != np.sign(after_text))),
        "mean |segment policy - text alone|": float(np.mean(np.abs(served.predictions - alone.predictions))),
        "mean |window policy - text alone|": float(np.mean(np.abs(windowed.predictions - alone.predictions))),
    }


def ridge_row(stored: dict[str, list[Sample]], split: str) -> tuple[dict[str, float], float]:
    train, valid, evaluated = (mean_pooled(stored[s], "text") for s in ("train", "valid", split))
    ridge = fit_on_validation(train, valid)
    return sentiment_metrics(ridge.predict(evaluated[0]), evaluated[1]), ridge.alpha


def markdown(rows: dict[str, dict[str, float]], split: str, samples: int) -> str:
    lines = [f"| {split} split ({samples}) | " + " | ".join(name for name, _ in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for name, metrics in rows.items():
        cells = [_cell(metrics.get(key), key) for _, key in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: float | None, key: str) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if key in ("mae", "corr") else f"{100 * value:.1f}"


def report_arguments(description: str) -> argparse.ArgumentParser:
    """The options every CMU-MOSI report takes: which model, on which store, media and split."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED, help=f"default: the packaged model ({SHIPPED.name})")
    parser.add_argument("--store", default="runs/mosi_text", help="the CMU-MOSI text feature store")
    parser.add_argument("--media", default="../shared/data/media", help="the recordings the audio and video windows come from")
    parser.add_argument("--split", default="test", choices=("test", "valid"),
                        help="valid: to choose between runs without looking at the test split")
    parser.add_argument("--json", type=Path, help="also write every number here")
    parser.add_argument("--gate-floors", nargs="+", type=gate_floor_item, metavar="MODALITY=FLOOR",
                        help="measure the checkpoint with these per-modality gate floors (model.gate_floors) "
                             "instead of its own, e.g. audio=0.45 video=0.45")
    return parser


def gate_floor_item(text: str) -> tuple[str, float]:
    """'audio=0.45' -> ('audio', 0.45), for --gate-floors."""
    name, _, value = text.partition("=")
    try:
        floor = float(value)
    except ValueError:
        floor = None
    if not name or floor is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not MODALITY=FLOOR: write e.g. audio=0.45")
    return name, floor


def with_floors(args: argparse.Namespace) -> str:
    """How a report names --gate-floors after the checkpoint ('' without them)."""
    floors = ", ".join(f"{name} {floor:g}" for name, floor in args.gate_floors or [])
    return f" with gate floors {floors}" if floors else ""


def measured_model(args: argparse.Namespace) -> tuple[GRF, FeatureSpec]:
    """The checkpoint a report measures, with --gate-floors in place of its own where given."""
    floors = dict(args.gate_floors) if args.gate_floors else None
    try:
        model, spec, _ = load_model(args.checkpoint, gate_floors=floors)
    except ConfigError as error:
        if floors is None:
            raise
        raise SystemExit(f"--gate-floors: {error}") from None
    return model, spec


def main(argv: list[str] | None = None) -> None:
    args = report_arguments(__doc__.splitlines()[0]).parse_args(argv)

    model, spec = measured_model(args)
    data = DataConfig(format="store", path=args.store, distractors=DistractorConfig(media=args.media))
    stored = {split: load_split(data, split) for split in ("train", "valid", args.split)}
    text_only = stored[args.split]
    rows, movement = grf_rows(model, spec, text_only, evaluation_form(text_only, load_distractors(data)))
    rows["Ridge on mean-pooled text features (floor)"], alpha = ridge_row(stored, args.split)
    if args.split == "test":  # the published numbers are test-split numbers
        rows["MulT, text+audio+video (published)"] = MULT_PUBLISHED
    print(f"{args.checkpoint}{with_floors(args)} on {args.store} [{args.split}]; audio and video windows from "
          f"{args.media}\n")
    print(markdown(rows, args.split, len(text_only)))
    print(f"\nridge alpha {alpha:g} (by validation MAE)" + (f"; MulT: {MULT_SOURCE}" if args.split == "test" else ""))
    for name, value in movement.items():
        print(f"{name}: {value:.4f}" if isinstance(value, float) else f"{name}: {value} of {len(text_only)}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "movement": movement, "ridge_alpha": alpha}, indent=2) + "\n")


if __name__ == "__main__":
    main()
