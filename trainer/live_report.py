"""The live report: a model measured as users run it, whole videos streamed through one context.

    python -m trainer.live_report                          # the packaged model, test split
    python -m trainer.live_report --checkpoint runs/mosi_live/checkpoints/best.pt --split valid
    python -m trainer.live_report --media DIR --window-s 0.5 --json live.json
    python -m trainer.live_report --split valid --gate-floors audio=0.45 video=0.45   # other gate floors

Each video of the split is one stream (grf_stream/data/streams.py): its utterances at their CSV
times, each phrase a text step when its utterance ends, and audio and video windows of real,
unrelated recordings from --media every --window-s seconds from the video's start to its last
phrase. The steps go through `FusionService`, the fusion engine the server runs, one session per
video, with the session settings a client gets by default (window policy, window_s 1 s, one
segment for the whole stream: the context carries across phrases). Rows:

- phrase: the prediction right after each phrase, against that utterance's label;
- held: every prediction made while a phrase is the latest one, against that phrase's label
  (what a viewer sees between phrases);
- jitter: the mean |change of prediction| over steps without text after the first phrase, and
  the sign flips those steps cause per 10 minutes of stream;
- references on the same replay: the packaged model (when another checkpoint is measured), a
  ridge regression on the latest phrase (the floor), and the training mean;
- below the table, how the measured model's prediction holds: its range before the first phrase,
  and its mean drift from the value right after a phrase, 5-10, 10-20 and 20-40 s after it; and
  how large its sign flips are: over how many phrases they fall, and how far from zero they reach.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from grf_stream.baselines.ridge import fit_on_validation, mean_pooled
from grf_stream.checkpoint import load_model
from grf_stream.data import DataConfig, DistractorConfig, FeatureStore, load_distractors, load_split
from grf_stream.data.streams import TEXT, MediaTrack, Stream, videos, whole_video
from grf_stream.default_model import SHIPPED
from grf_stream.metrics import sentiment_metrics
from grf_stream.model import GRF
from grf_stream.serving.engine import FusionService, StepRequest
from trainer.mosi_report import measured_model, report_arguments, with_floors

WINDOW_S = 1.0  # the client's default --window-s
COLUMNS = (("Phrase MAE", "phrase_mae"), ("Corr", "phrase_corr"), ("Acc-7", "phrase_acc7"),
           ("Acc-2 non-0", "phrase_acc2_non0"), ("Held MAE", "held_mae"), ("Jitter", "jitter"),
           ("Flips / 10 min", "flips_per_10min"))


def live_streams(store: str | Path, split: str, media: str | Path, window_s: float = WINDOW_S) -> list[Stream]:
    """Every video of a split of a timed feature store as one whole stream."""
    data = DataConfig(format="store", path=str(store), distractors=DistractorConfig(media=str(media)))
    track = MediaTrack(load_distractors(data))
    by_video = videos(FeatureStore.open(store), load_split(data, split))
    return [whole_video(video, utterances, track, window_s) for video, utterances in by_video.items()]


@torch.no_grad()
def replay(model: GRF, streams: list[Stream], device: str = "cpu") -> list[np.ndarray]:
    """Every stream through one FusionService, one session each: the prediction after every step.

    The sessions' steps go in together, round by round, as a busy server batches them.
    """
    was_training = model.training
    service = FusionService(model, device, threads=torch.get_num_threads())
    for stream in streams:
        service.open(stream.name)
    predictions: list[list[float]] = [[] for _ in streams]
    for k in range(max(len(s.steps) for s in streams)):
        live = [i for i, s in enumerate(streams) if k < len(s.steps)]
        requests = [StepRequest(streams[i].name, k, *_step(streams[i], k)) for i in live]
        for i, result in zip(live, service.step(requests)):
            predictions[i].append(result.value)
    model.train(was_training)
    return [np.array(p, np.float32) for p in predictions]


def _step(stream: Stream, k: int) -> tuple[str, np.ndarray, np.ndarray]:
    step = stream.steps[k]
    return step.modality, np.ascontiguousarray(step.features, np.float32), step.mask


def quiet_steps(stream: Stream) -> np.ndarray:
    """(S-1,): the steps after the first that carry no text and come after the first phrase."""
    return np.array([s.phrase >= 0 and s.modality != TEXT for s in stream.steps[1:]], bool)


def flipped(values: np.ndarray, quiet: np.ndarray) -> np.ndarray:
    """(S-1,): where a quiet step (quiet_steps) changes the prediction's sign."""
    return quiet & (np.sign(values[1:]) != np.sign(values[:-1]))


def live_metrics(streams: list[Stream], predictions: list[np.ndarray]) -> dict[str, float]:
    """Phrase, held and jitter figures of per-step predictions (the rows of the module docstring)."""
    phrase_p, phrase_y, held, moves, flips = [], [], [], [], 0
    for stream, values in zip(streams, predictions):
        phrase = np.array([s.phrase for s in stream.steps])
        text = np.array([s.modality == TEXT for s in stream.steps])
        phrase_p.append(values[text])
        phrase_y.append(stream.labels[phrase[text]])
        scored = phrase >= 0
        held.append(np.abs(values[scored] - stream.labels[phrase[scored]]))
        quiet = quiet_steps(stream)
        moves.append(np.abs(np.diff(values))[quiet])
        flips += int(flipped(values, quiet).sum())
    phrase = sentiment_metrics(np.concatenate(phrase_p), np.concatenate(phrase_y))
    minutes = sum(s.seconds for s in streams) / 60
    return {**{f"phrase_{k}": v for k, v in phrase.items()}, "held_mae": float(np.concatenate(held).mean()),
            "jitter": float(np.concatenate(moves).mean()), "flips_per_10min": 10 * flips / minutes}


def live_score(valid_mae: float, live: dict[str, float]) -> float:
    """What `train.select: live` minimises: the mean of the per-utterance validation MAE and the live
    replay's phrase and held MAE on the validation videos."""
    return float(np.mean([valid_mae, live["phrase_mae"], live["held_mae"]]))


DRIFT_BINS_S = ((5, 10), (10, 20), (20, 40))


def holding(streams: list[Stream], predictions: list[np.ndarray]) -> dict[str, float]:
    """How a prediction holds: before the first phrase (its range over the streams), and its mean drift
    from the value right after the latest phrase, by seconds since that phrase."""
    before, drift = [], {bin_: [] for bin_ in DRIFT_BINS_S}
    for stream, values in zip(streams, predictions):
        phrase = np.array([s.phrase for s in stream.steps])
        before += list(values[phrase < 0])
        said = {}  # phrase -> (when, the prediction right after it)
        for step, value in zip(stream.steps, values):
            if step.modality == TEXT:
                said[step.phrase] = (step.at, value)
            elif step.phrase >= 0:
                at, after = said[step.phrase]
                for low, high in DRIFT_BINS_S:
                    if low <= step.at - at < high:
                        drift[(low, high)].append(abs(value - after))
    numbers = {"before_first_min": float(np.min(before)), "before_first_max": float(np.max(before))}
    return numbers | {f"drift_{low}_{high}s": float(np.mean(d)) for (low, high), d in drift.items() if d}


def flip_sizes(streams: list[Stream], predictions: list[np.ndarray]) -> dict[str, float]:
    """The sign flips that live_metrics counts: how many, over how many phrases, and the largest
    |prediction| on either side of one (a flip between +0.003 and -0.002 is a prediction at zero;
    one between +1 and -1 is a changed mind)."""
    phrases, largest, flips = set(), 0.0, 0
    for stream, values in zip(streams, predictions):
        at = np.flatnonzero(flipped(values, quiet_steps(stream))) + 1
        flips += len(at)
        phrases |= {(stream.name, stream.steps[k].phrase) for k in at}
        largest = max(largest, float(np.abs(values[at]).max(initial=0)), float(np.abs(values[at - 1]).max(initial=0)))
    return {"flips": flips, "flip_phrases": len(phrases), "flip_largest": largest}


def latest_phrase(streams: list[Stream], phrase_values: list[np.ndarray], before: float) -> list[np.ndarray]:
    """Per-step predictions of a model that reads only the latest phrase (`before` until the first)."""
    out = []
    for stream, values in zip(streams, phrase_values):
        phrase = np.array([s.phrase for s in stream.steps])
        out.append(np.where(phrase >= 0, values[np.maximum(phrase, 0)], before).astype(np.float32))
    return out


def reference_rows(streams: list[Stream], store: str, split: str) -> dict[str, dict[str, float]]:
    """The ridge floor held after each phrase, and the training mean, on the same replay."""
    data = DataConfig(format="store", path=store)
    stored = {s: load_split(data, s) for s in ("train", "valid")}
    ridge = fit_on_validation(*(mean_pooled(stored[s], TEXT) for s in ("train", "valid")))
    by_id = {}
    for stream in streams:
        phrases = [s for s in stream.steps if s.modality == TEXT]
        by_id[stream.name] = ridge.predict(np.stack([f.features[f.mask].mean(axis=0) for f in phrases]))
    mean = float(np.mean([s.label for s in stored["train"]]))
    ridge_values = latest_phrase(streams, [by_id[s.name] for s in streams], mean)
    constant = [np.full(len(s.steps), mean, np.float32) for s in streams]
    return {"Ridge on the latest phrase's mean-pooled text features (floor)": live_metrics(streams, ridge_values),
            f"Training mean ({mean:+.3f})": live_metrics(streams, constant)}


def markdown(rows: dict[str, dict[str, float]], caption: str) -> str:
    lines = [f"| {caption} | " + " | ".join(name for name, _ in COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for name, metrics in rows.items():
        lines.append(f"| {name} | " + " | ".join(_cell(metrics[key], key) for _, key in COLUMNS) + " |")
    return "\n".join(lines)


def _cell(value: float, key: str) -> str:
    if key in ("phrase_acc7", "phrase_acc2_non0"):
        return f"{100 * value:.1f}"
    return f"{value:.2f}" if key == "flips_per_10min" else f"{value:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = report_arguments(__doc__.splitlines()[0])
    parser.add_argument("--window-s", type=float, default=WINDOW_S, help="audio and video window (the session's window_s)")
    args = parser.parse_args(argv)

    streams = live_streams(args.store, args.split, args.media, args.window_s)
    measured = f"GRF {args.checkpoint.name}{with_floors(args)}"
    models = {measured: measured_model(args)[0]}
    if args.checkpoint.resolve() != SHIPPED.resolve() or args.gate_floors:
        models["GRF packaged default.pt"] = load_model(SHIPPED)[0]
    predictions = {name: replay(model, streams) for name, model in models.items()}
    rows = {name: live_metrics(streams, values) for name, values in predictions.items()}
    rows.update(reference_rows(streams, args.store, args.split))
    phrases = sum(len(s.labels) for s in streams)
    windows = sum(len(s.steps) for s in streams) - phrases
    minutes = sum(s.seconds for s in streams) / 60
    print(f"{args.checkpoint}{with_floors(args)} live on {args.store} [{args.split}]: {len(streams)} videos, "
          f"{minutes:.0f} min, {phrases} phrases, {windows} audio/video steps of {args.window_s:g} s from {args.media}\n")
    print(markdown(rows, f"{args.split} split, live ({len(streams)} videos)"))
    held = holding(streams, predictions[measured])
    print(f"\n{measured} before the first phrase: {held['before_first_min']:+.2f} to "
          f"{held['before_first_max']:+.2f}; drift from the value right after a phrase, by seconds since it: "
          + ", ".join(f"{low}-{high} s {held[f'drift_{low}_{high}s']:.2f}" for low, high in DRIFT_BINS_S
                      if f"drift_{low}_{high}s" in held))
    flips = flip_sizes(streams, predictions[measured])
    print(f"{measured} sign flips: {flips['flips']} over {flips['flip_phrases']} phrases, none between values "
          f"farther than {flips['flip_largest']:.3f} from zero")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "holding": held, "flips": flips, "videos": len(streams),
                                         "minutes": minutes, "phrases": phrases, "window_steps": windows},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
