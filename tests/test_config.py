"""Strict configs: every shipped file loads, unknown keys and bad values are named."""

from pathlib import Path

import pytest

from grf_stream.config import CONFIG_KINDS, ConfigError, config_class, load_config, to_dict
from grf_stream.model import GRFConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
FILES = sorted(CONFIG_DIR.rglob("*.yaml"))


def test_there_are_config_files_of_every_kind():
    assert {f.parent.name for f in FILES} == set(CONFIG_KINDS)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_config_file_loads_and_says_how_it_is_used(path):
    config = load_config(config_class(path.parent.name), path)
    assert to_dict(config)
    header = path.read_text().splitlines()[0]
    assert header.startswith("# "), f"{path} must open with a comment saying what uses it"
    assert "python -m " in path.read_text().split("\n\n")[0], f"{path}: give the command that uses it"


def test_overrides_are_dotted_and_typed():
    config = load_config(
        GRFConfig,
        CONFIG_DIR / "model" / "grf.yaml",
        ["d_model=128", "dropout=1e-3", "modalities.text=384", "order=[vision, text, audio]"],
    )
    assert config.d_model == 128 and config.dropout == 0.001
    assert config.modalities["text"] == 384 and config.order == ["vision", "text", "audio"]


def test_defaults_are_used_without_a_file():
    assert load_config(GRFConfig) == GRFConfig()


@pytest.mark.parametrize(
    "override, message",
    [
        ("d_modle=128", "unknown key 'd_modle' in GRFConfig"),
        ("d_model=1.5", "d_model: 1.5 is not a valid int"),
        ("share_block=1", "share_block: 1 is not a valid bool"),
        ("dropout=lots", "dropout: 'lots' is not a valid float"),
        ("modalities.text=big", r"modalities.text: 'big' is not a valid int"),
        ("init=mean", "init='mean' is not one of"),
        ("d_model", "is not key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(GRFConfig, None, [override])


def test_unknown_key_in_a_file_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("d_model: 64\nnum_layer: 2\n")
    with pytest.raises(ConfigError, match="unknown key 'num_layer'"):
        load_config(GRFConfig, path)


def test_missing_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(GRFConfig, tmp_path / "nope.yaml")


def test_a_data_plane_that_does_not_exist_is_refused_before_anything_starts():
    from grf_stream.serve import ServeConfig

    with pytest.raises(ConfigError, match="data_plane='zmq': choose one of tcp, ray"):
        load_config(ServeConfig, None, ["data_plane=zmq"])
    assert load_config(ServeConfig, None, ["data_plane=ray"]).data_plane == "ray"
