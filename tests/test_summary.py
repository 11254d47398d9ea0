"""`python -m grf_stream.summary` reports the sizes a config builds."""

from pathlib import Path

from grf_stream import summary

RELEASED = Path(__file__).resolve().parents[1] / "configs" / "model" / "grf_released.yaml"


def test_summary_prints_parts_and_total(capsys):
    summary.main(["--config", str(RELEASED)])
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines() if line.count(" ") > 1)
    assert lines["total"].strip() == "1,126,530"
    assert lines["aux_head"].strip() == "2,113"


def test_summary_applies_overrides(capsys):
    summary.main(["--config", str(RELEASED), "d_model=32", "num_heads=2"])
    assert "1,126,530" not in capsys.readouterr().out
