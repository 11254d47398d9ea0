"""The trainer for real on Ray Train: checkpoints, determinism, resume, DDP, TensorBoard, evaluate."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from grf_stream.checkpoint import load_model
from grf_stream.config import load_config
from grf_stream.data import load_split
from stores import MEDIA, text_store
from trainer import evaluate, train
from trainer.config import TrainConfig

TINY = str(Path(__file__).resolve().parents[2] / "configs" / "train" / "synthetic_tiny.yaml")
SMALL = ["data.synthetic.samples={train: 96, valid: 32, test: 32}", "train.epochs=4", "train.patience=10"]


pytestmark = pytest.mark.usefixtures("local_ray")


def run(tmp_path, name, *overrides, resume=False, small=True):
    args = ["--config", TINY, f"output_dir={tmp_path}", f"name={name}", *(SMALL if small else []), *overrides]
    train.main(args + (["--resume"] if resume else []))
    return tmp_path / name


def metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def test_a_run_learns_and_writes_checkpoints_serving_can_load(tmp_path):
    out = run(tmp_path, "first", small=False)
    model, spec, payload = load_model(out / "checkpoints" / "best.pt")
    assert model.config.modalities == {"text": 12, "audio": 5, "vision": 8}
    assert spec.sizes() == model.config.modalities
    assert payload["run_config"]["train"]["epochs"] == 6
    summary = metrics(out)
    assert set(summary) == {"train", "valid", "test"}
    labels = np.array([s.label for s in load_split(load_config(TrainConfig, TINY).data, "test")])
    constant = np.abs(labels - np.median(labels)).mean()  # the best a model that ignores its input can do
    assert summary["test"]["mae"] < 0.75 * constant


def test_same_seed_same_metrics_and_resume_ends_where_a_whole_run_ends(tmp_path):
    whole = metrics(run(tmp_path, "whole"))
    run(tmp_path, "interrupted", "train.stop_after=2")
    last = torch.load(tmp_path / "interrupted" / "checkpoints" / "last.pt", weights_only=False)
    assert last["training_state"]["progress"]["epoch"] == 2
    resumed = metrics(run(tmp_path, "interrupted", resume=True))
    assert resumed == whole


def test_the_weight_average_is_what_is_chosen_and_saved_and_resumes_exactly(tmp_path):
    whole = metrics(run(tmp_path, "ema", "optim.ema=0.9"))
    run(tmp_path, "ema-interrupted", "optim.ema=0.9", "train.stop_after=2")
    resumed = metrics(run(tmp_path, "ema-interrupted", "optim.ema=0.9", resume=True))
    assert resumed == whole
    last = torch.load(tmp_path / "ema" / "checkpoints" / "last.pt", weights_only=False)
    served, raw, average = last["model_state"], last["training_state"]["model"], last["training_state"]["average"]
    assert all(torch.equal(served[k], average[f"module.{k}"]) for k in served)  # the average is what is served
    assert any(not torch.equal(served[k], raw[k]) for k in raw)  # and it is not the last step's weights


def test_refuses_to_overwrite_a_run_and_to_resume_nothing(tmp_path):
    with pytest.raises(SystemExit, match="no .* to resume from"):
        run(tmp_path, "nothing", resume=True)


def test_two_workers_train_with_ddp(tmp_path):
    out = run(tmp_path, "ddp", "scaling.num_workers=2", "train.epochs=2")
    assert (out / "checkpoints" / "best.pt").exists()
    assert metrics(out)["valid"]["mae"] > 0


def test_tensorboard_shows_losses_metrics_gates_and_contexts(tmp_path):
    out = run(tmp_path, "board", "train.order=fixed")
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0}).Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("loss/train", "lr", "mae/train", "mae/valid", "f1_non0/test", "gate_mean/audio", "gate_mean/step3_vision"):
        assert tag in tags, tag
    assert len(events.Scalars("mae/valid")) == 4
    assert "gate/step2_audio" in events.Tags()["histograms"]
    projector = (out / "tensorboard" / "projector_config.pbtxt").read_text()
    assert projector.count("embeddings") == 3 and "context_h3_vision" in projector


def test_windowed_training_and_evaluate_prints_the_table_and_every_order(tmp_path, capsys):
    # Audio and vision cut into windows fused as separate steps, as the window serving policy does.
    out = run(tmp_path, "evaluated", "train.epochs=1", "train.window_steps={audio: 8, vision: 8}")
    evaluate.main([str(out / "checkpoints" / "best.pt"), "--orders", "all", "--json", str(tmp_path / "m.json")])
    table = capsys.readouterr().out
    assert "text-audio-vision" in table and "vision-audio-text" in table
    assert len(json.loads((tmp_path / "m.json").read_text())) == 6


@pytest.mark.skipif(not MEDIA.is_dir(), reason="needs ../shared/data/media (the distractor recordings)")
def test_text_labels_with_distractor_audio_and_video_train_a_model_the_server_can_take(tmp_path, capsys):
    store = text_store(tmp_path / "store")
    out = run(tmp_path, "distracted", "data.format=store", f"data.path={store}", f"data.distractors.media={MEDIA}",
              "model.modalities={text: 384, audio: 26, video: 17}", "model.order=[audio, video, text]",
              "model.feature_norm=true", "train.epochs=2", small=False)
    model, spec, _ = load_model(out / "checkpoints" / "best.pt")
    from grf_stream.features import feature_spec

    assert spec == feature_spec(("text", "audio", "video"))  # the store's text, the recordings' audio and video
    assert float(model.encoders["audio"].norm.std.max()) > 10  # measured on the raw MFCC scale
    evaluate.main([str(out / "checkpoints" / "best.pt"), "--orders", "text,audio,video"])
    evaluate.main([str(out / "checkpoints" / "best.pt"), "--no-distractors"])
    printed = capsys.readouterr().out
    # The run records resolved paths (../shared may be a link).
    assert f"with distractors from {MEDIA.resolve()}" in printed and "text-audio-video" in printed
    assert "audio-video-text" in printed.split("[test],")[-1]  # the model's order, text alone present
    with pytest.raises(SystemExit, match="--media DIR"):
        evaluate.main([str(out / "checkpoints" / "best.pt"), "--media", str(tmp_path / "gone")])


LIVE = ["model.init=learned", "model.gfu=keep", "train.streams.batches=0.5", "train.streams.stability=0.5",
        "train.select=live"]


@pytest.mark.skipif(not MEDIA.is_dir(), reason="needs ../shared/data/media (the windows of the live streams)")
def test_live_streams_train_choose_by_the_live_replay_and_resume_exactly(tmp_path):
    store = text_store(tmp_path / "store")
    common = ["data.format=store", f"data.path={store}", f"data.distractors.media={MEDIA}",
              "model.modalities={text: 384, audio: 26, video: 17}", "model.order=[audio, video, text]",
              "model.feature_norm=true", "train.epochs=2", *LIVE]
    whole = metrics(run(tmp_path, "live", *common, small=False))
    run(tmp_path, "live-interrupted", *common, "train.stop_after=1", small=False)
    resumed = metrics(run(tmp_path, "live-interrupted", *common, resume=True, small=False))
    assert resumed == whole
    assert {"phrase_mae", "held_mae", "jitter", "flips_per_10min"} <= set(whole["valid_live"])
    best = torch.load(tmp_path / "live" / "checkpoints" / "best.pt", weights_only=False)
    live = {k: best["metrics"][f"live_{k}"] for k in ("phrase_mae", "held_mae")}
    assert best["run_config"]["train"]["select"] == "live" and all(v > 0 for v in live.values())


def test_tuning_part_of_a_model_needs_the_model_to_start_from():
    with pytest.raises(ValueError, match="set train.init_from too"):
        load_config(TrainConfig, TINY, ["train.tune_only=[head]"])


def test_live_training_needs_a_timed_store_and_recordings(tmp_path):
    with pytest.raises(ValueError, match="need a timed feature store"):
        load_config(TrainConfig, TINY, ["train.streams.batches=1"])


def test_a_run_fine_tunes_from_another_runs_weights_and_refuses_another_model(tmp_path):
    parent = run(tmp_path, "parent")
    best = parent / "checkpoints" / "best.pt"
    fresh = metrics(run(tmp_path, "fresh", "train.epochs=1"))
    tuned = metrics(run(tmp_path, "tuned", "train.epochs=1", "optim.warmup_epochs=0", "optim.lr=1e-5",
                        f"train.init_from={best}"))
    parent_mae = metrics(parent)["valid"]["mae"]
    # One epoch at a tiny learning rate stays where the parent ended, far from a fresh start.
    assert abs(tuned["valid"]["mae"] - parent_mae) < 0.25 * abs(fresh["valid"]["mae"] - parent_mae)
    # Settings that hold no weight may change in a fine-tune; the gate floor is one.
    floored = run(tmp_path, "floored", "train.epochs=1", "model.gate_floor=0.05", f"train.init_from={best}")
    assert torch.load(floored / "checkpoints" / "best.pt", weights_only=False)["model_config"]["gate_floor"] == 0.05
    # train.tune_only trains the parameters it names and leaves the others exactly as they were.
    gate = "fusion.block.gfu.gate"
    part = run(tmp_path, "part", "train.epochs=1", "optim.warmup_epochs=0", f"train.init_from={best}",
               f"train.tune_only=[{gate}]")
    before, after = (torch.load(p, weights_only=False)["model_state"] for p in (best, part / "checkpoints" / "best.pt"))
    assert not torch.equal(before[f"{gate}.weight"], after[f"{gate}.weight"])
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith(gate))
    with pytest.raises(SystemExit, match="'fusion.gate' names no parameter of this model"):
        run(tmp_path, "nothing_named", f"train.init_from={best}", "train.tune_only=[fusion.gate]")
    with pytest.raises(SystemExit, match="holds another model"):
        run(tmp_path, "other", "model.d_model=16", f"train.init_from={best}")
    with pytest.raises(SystemExit, match="does not exist"):
        run(tmp_path, "missing", f"train.init_from={tmp_path}/nothing.pt")
