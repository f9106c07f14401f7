"""Config parsing, overrides and the clear refusal of bad keys and values."""

from pathlib import Path

import pytest

from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.methods import build_method

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_defaults_and_overrides():
    cfg = load_config(
        None, ["train.lr=3e-4", "method.name=lora", "method.r=16", "data.max_train_examples=100"]
    )
    assert cfg.train.lr == 3e-4 and cfg.data.max_train_examples == 100
    assert build_method(cfg.method).r == 16


def test_yaml_file_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("method: {name: lora, r: 4}\ntrain: {epochs: 2, batch_size: 8}\n")
    cfg = load_config(p, ["train.epochs=3"])
    assert cfg.train.epochs == 3 and cfg.train.batch_size == 8 and cfg.method["r"] == 4


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_parses(path):
    cfg = load_config(path)
    build_method(cfg.method)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.lrr=1"], "unknown config key 'train.lrr'"),
        (["trian.lr=1"], "unknown config key 'trian'"),
        (["train.lr=fast"], "train.lr must be a number, got 'fast'"),
        (["train.batch_size=2.5"], "train.batch_size must be an integer"),
        (["train.batch_size=0"], "train.batch_size must be > 0"),
        (["train.schedule=step"], "train.schedule must be one of linear, cosine, constant"),
        (["train.lr=nan"], "must be a finite number"),
        (["lr"], "must look like key=value"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, overrides)


def test_bad_method_knobs():
    with pytest.raises(ConfigError, match="unknown method 'lorax'"):
        build_method({"name": "lorax"})
    with pytest.raises(ConfigError, match="unknown config key 'method.rank'.*allowed.*r"):
        build_method({"name": "lora", "rank": 4})
    with pytest.raises(ConfigError, match="method.r must be an integer"):
        build_method({"name": "lora", "r": "big"})


def test_yaml_booleans_in_string_fields_come_back_as_words(tmp_path):
    """`mixed_precision: no` is a boolean to YAML; the field means the word."""
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  mixed_precision: no\nname: off\n")
    cfg = load_config(p)
    assert cfg.train.mixed_precision == "no" and cfg.name == "off"
    assert load_config(None, ["train.save_model=no"]).train.save_model is False
