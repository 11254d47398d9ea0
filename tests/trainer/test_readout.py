"""trainer.readout: the text ridge fitted onto a trained GRF as (10)'s read-out, its weight chosen on validation."""

import re

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from grf_stream.baselines.ridge import fit_on_validation, mean_pooled
from grf_stream.checkpoint import load_model, save_checkpoint
from grf_stream.data import DataConfig, load_split
from grf_stream.features import feature_spec
from grf_stream.model import GRF, GRFConfig
from stores import MEDIA, text_store
from trainer import readout


@pytest.mark.skipif(not MEDIA.is_dir(), reason="needs ../shared/data/media (the windows of the live streams)")
def test_the_text_ridge_becomes_the_readout_its_weight_chosen_by_the_validation_score(tmp_path, capsys):
    store = text_store(tmp_path / "store")
    torch.manual_seed(0)
    model = GRF(GRFConfig(modalities={"text": 384, "audio": 26, "video": 17}, d_model=8, num_layers=1, num_heads=2,
                          d_ffn=16, order=["audio", "video", "text"], init="learned", gfu="keep"))
    save_checkpoint(tmp_path / "grf.pt", model, feature_spec(("text", "audio", "video")), metrics={"mae": 1.0})
    out = tmp_path / "blended.pt"
    readout.main(["--checkpoint", str(tmp_path / "grf.pt"), "--out", str(out), "--store", str(store),
                  "--media", str(MEDIA), "--weights", "0.2", "0.9"])

    blended, _, payload = load_model(out)
    printed = capsys.readouterr().out
    scores = {float(w): float(s) for w, s in re.findall(r"^\| ([\d.]+) \| ([\d.]+) \|", printed, re.M)}
    assert set(scores) == {0.2, 0.9}
    chosen = min(scores, key=scores.get)
    assert blended.config.readout == "text"
    assert blended.config.readout_weight == chosen == payload["metrics"]["readout_weight"]
    assert payload["metrics"]["mae"] == 1.0  # the run's own metrics ride along
    for name, weight in model.state_dict().items():  # the GRF itself is untouched
        assert torch.equal(blended.state_dict()[name], weight), name

    data = DataConfig(format="store", path=str(store))
    train, valid = (mean_pooled(load_split(data, split), "text") for split in ("train", "valid"))
    ridge = fit_on_validation(train, valid)
    with torch.no_grad():
        read = blended.readout.linear(torch.as_tensor(valid[0], dtype=torch.float32)).squeeze(-1)
    assert_close(read, torch.as_tensor(ridge.predict(valid[0]), dtype=torch.float32), atol=1e-4, rtol=1e-4)
    assert blended.readout.start.item() == pytest.approx(np.mean(train[1]))

    with pytest.raises(SystemExit):  # argparse: "'1.5' is not a weight in (0, 1]"
        readout.main(["--checkpoint", str(out), "--out", str(tmp_path / "x.pt"), "--weights", "1.5"])
    assert "is not a weight in (0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="has a read-out already"):
        readout.main(["--checkpoint", str(out), "--out", str(tmp_path / "again.pt"), "--store", str(store)])
