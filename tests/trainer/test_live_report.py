"""The live report's figures, and its replay: the fusion engine stepping whole streams."""

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from grf_stream.checkpoint import save_checkpoint
from grf_stream.data.streams import Stream, StreamStep
from grf_stream.model import GRF, GRFConfig
from grf_stream.spec import FeatureSpec
from trainer.live_report import flip_sizes, latest_phrase, live_metrics, markdown, replay
from trainer.mosi_report import measured_model, report_arguments

SIZES = {"audio": 3, "video": 2, "text": 4}


def hand_stream(kinds: str, labels, seconds=60.0, seed=0, name="s") -> Stream:
    """a/v/t letters as steps; each t is the next phrase."""
    rng, steps, phrase = np.random.default_rng(seed), [], -1
    names = {"a": "audio", "v": "video", "t": "text"}
    for k, kind in enumerate(kinds):
        phrase += kind == "t"
        rows = int(rng.integers(1, 5))
        features = rng.normal(size=(rows, SIZES[names[kind]])).astype(np.float32)
        steps.append(StreamStep(float(k), names[kind], features, np.ones(rows, bool), phrase))
    return Stream(name, steps, np.array(labels, np.float32), seconds)


def test_phrase_held_jitter_and_flips_by_hand():
    stream = hand_stream("atavta", [1.0, -2.0])
    values = np.array([0.5, 0.8, 0.9, -0.1, -1.5, -1.0], np.float32)
    got = live_metrics([stream], [values])
    assert got["phrase_mae"] == pytest.approx((0.2 + 0.5) / 2)  # after each phrase: 0.8 vs 1, -1.5 vs -2
    assert got["held_mae"] == pytest.approx((0.2 + 0.1 + 1.1 + 0.5 + 1.0) / 5)  # nothing before the first phrase
    assert got["jitter"] == pytest.approx((0.1 + 1.0 + 0.5) / 3)  # the audio and video steps after it
    assert got["flips_per_10min"] == pytest.approx(10.0)  # one flip (0.9 -> -0.1) in one minute
    assert got["phrase_acc2_non0"] == 1.0


def test_flip_sizes_count_the_flips_live_metrics_counts_and_how_far_from_zero_they_reach():
    one = hand_stream("avtavavtav", [1.0, -2.0], name="one")
    values = np.array([0.5, -0.5, 0.002, -0.003, 0.001, 0.2, -0.1, -1.0, 0.4, 0.3], np.float32)
    two = hand_stream("tavt", [0.5, 0.5], name="two")
    steady = np.array([0.4, 0.5, 0.45, 0.5], np.float32)
    got = flip_sizes([one, two], [values, steady])
    # in the first phrase two flips at zero and 0.2 -> -0.1, in the second -1.0 -> 0.4; not the flip before
    # the first phrase, nor a phrase step's own change of sign
    assert got == {"flips": 4, "flip_phrases": 2, "flip_largest": pytest.approx(1.0)}
    assert live_metrics([one], [values])["flips_per_10min"] == pytest.approx(10.0 * 4)


def test_a_model_of_the_latest_phrase_never_jitters():
    stream = hand_stream("aatavvta", [1.0, -2.0])
    values = latest_phrase([stream], [np.array([0.7, -1.1])], before=0.3)[0]
    assert values.tolist() == pytest.approx([0.3, 0.3, 0.7, 0.7, 0.7, 0.7, -1.1, -1.1])
    got = live_metrics([stream], [values])
    assert got["jitter"] == 0 and got["flips_per_10min"] == 0
    assert "| 0.000 | 0.00 |" in markdown({"latest": got}, "caption")


def test_replay_steps_every_stream_as_one_session_of_the_fusion_engine():
    torch.manual_seed(0)
    model = GRF(GRFConfig(modalities=dict(SIZES), d_model=8, num_layers=1, num_heads=2, d_ffn=16, dropout=0.1,
                          init="learned", gfu="keep", order=["audio", "video", "text"])).train()
    streams = [hand_stream("avtavavt", [1.0, 2.0], seed=1, name="one"), hand_stream("tav", [0.5], seed=2, name="two"),
               hand_stream("vvavatat", [-1.0, 0.0], seed=3, name="three")]
    replayed = replay(model, streams)
    assert model.training  # handed back as it came
    model.eval()
    with torch.no_grad():
        for stream, values in zip(streams, replayed):
            steps = [(s.modality, torch.from_numpy(s.features)[None], torch.from_numpy(s.mask)[None]) for s in stream.steps]
            assert_close(torch.from_numpy(values), model.fuse(steps).step_predictions[0], atol=1e-5, rtol=1e-5)


def test_a_report_measures_a_checkpoint_with_other_gate_floors_and_the_same_weights(tmp_path, capsys):
    torch.manual_seed(0)
    model = GRF(GRFConfig(modalities=dict(SIZES), d_model=8, num_layers=1, num_heads=2, d_ffn=16,
                          init="learned", gfu="keep", gate_floor=0.2))
    checkpoint = tmp_path / "best.pt"
    save_checkpoint(checkpoint, model, FeatureSpec(), {}, {})
    parser = report_arguments("test")
    floored, _ = measured_model(parser.parse_args(["--checkpoint", str(checkpoint), "--gate-floors", "audio=0.45", "video=0.4"]))
    assert floored.config.gate_floors == {"audio": 0.45, "video": 0.4} and floored.config.gate_floor == 0.2
    for key, value in model.state_dict().items():
        assert torch.equal(floored.state_dict()[key], value)
    with pytest.raises(SystemExit):
        parser.parse_args(["--gate-floors", "audio"])
    assert "'audio' is not MODALITY=FLOOR: write e.g. audio=0.45" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"--gate-floors: .*gate_floors names \['speech'\]"):
        measured_model(parser.parse_args(["--checkpoint", str(checkpoint), "--gate-floors", "speech=0.3"]))
