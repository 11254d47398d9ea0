import csv

import pytest
import torch

from grf_stream.features import adapter
from grf_stream.features.text import load_plain_encoder
from trainer import text_tune

PHRASES = [("I loved it, wonderful", 2.6), ("it was awful and boring", -2.4), ("really great acting", 2.0),
           ("I hated every minute", -2.8), ("the best film this year", 2.2), ("a terrible waste of time", -2.0),
           ("quite good", 1.2), ("pretty bad", -1.2)]


def test_tuning_keeps_the_best_validation_epoch_and_writes_an_adapter_the_encoder_takes(tmp_path):
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "split", "label", "text"])
        for i, (text, label) in enumerate(PHRASES):
            writer.writerow([f"u{i}", "valid" if i >= 6 else "train", label, text])
    out = tmp_path / "adapter.pt"
    text_tune.main(["--labels", str(labels), "--out", str(out), "--epochs", "2"])
    saved = torch.load(out, weights_only=True)
    assert saved["epoch"] in (1, 2) and saved["rank"] == text_tune.RANK and saved["seed"] == 0
    _, encoder = load_plain_encoder()
    before = encoder.encoder.layer[0].attention.self.query.weight.clone()
    adapter.merge(encoder, saved)
    assert not torch.equal(encoder.encoder.layer[0].attention.self.query.weight, before)


def test_tuning_needs_train_and_valid_rows(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("id,split,label,text\nu0,train,1.0,good\n")
    with pytest.raises(SystemExit, match="valid"):
        text_tune.main(["--labels", str(labels), "--out", str(tmp_path / "a.pt"), "--epochs", "1"])
