"""Config parsing, overrides and the clear refusal of bad keys and values."""

import dataclasses
import re
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
    assert cfg.method.r == 16


def test_yaml_file_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("method: {name: lora, r: 4}\ntrain: {epochs: 2, batch_size: 8}\n")
    cfg = load_config(p, ["train.epochs=3"])
    assert cfg.train.epochs == 3 and cfg.train.batch_size == 8 and cfg.method.r == 4


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) and k != "space" else {key: v})
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_parses(path):
    """Every value the YAML sets is the value the run gets (a key silently dropped or
    renamed would leave the default in place)."""
    import yaml

    cfg = load_config(path)
    method = cfg.method
    raw = yaml.safe_load(path.read_text()) or {}
    assert raw, f"{path.name} sets nothing"
    for key, value in _flat(raw).items():
        if key == "method" or key == "method.name":
            assert method.name == (value if isinstance(value, str) else value["name"])
        elif key.startswith("method."):
            assert getattr(method, key.split(".", 1)[1]) == value, key
        else:
            got = cfg
            for part in key.split("."):
                got = got[part] if isinstance(got, dict) else getattr(got, part)
            assert got == value or str(got) == str(value), (key, got, value)


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


def test_method_name_composes_with_its_knobs_in_any_order(tmp_path):
    for order in (["method=lora", "method.r=16"], ["method.r=16", "method=lora"]):
        cfg = load_config(None, order)
        assert cfg.method.name == "lora" and cfg.method.r == 16
    p = tmp_path / "c.yaml"
    p.write_text("method: {name: prompt, num_virtual_tokens: 20}\n")
    # another method on the command line starts from that method's defaults
    assert load_config(p, ["method=lora"]).method == build_method({"name": "lora"})
    assert load_config(p, ["method.init=text"]).method.num_virtual_tokens == 20


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"name": "prompt", "init": "txt"}, "method.init must be one of random, text"),
        ({"name": "lora", "dropout": 1.0}, "method.dropout must be in [0, 1)"),
        ({"name": "lora", "r": 0}, "method.r must be > 0"),
        ({"name": "freeze", "k": -1}, "method.k must be >= 0"),
        (
            {"name": "llrd", "lr": 1e-3},
            "method.lr is not a knob: a run's learning rate is train.lr",
        ),
    ],
)
def test_method_knobs_are_checked_by_build_method(spec, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_method(spec)


@pytest.mark.parametrize(
    "override",
    [
        "data.max_train_examples=-5",
        "data.max_eval_examples=0",
        "train.max_steps=-1",
        "train.patience=-2",
        "train.eval_every=-1",
        "train.weight_decay=-0.1",
        "train.warmup=1",
    ],
)
def test_counts_and_ranges_reject_bad_values(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(None, [override])


def test_every_field_is_documented_and_the_docs_reach_the_cli(capsys):
    from tunelab.cli import build_parser, main
    from tunelab.config import SECTIONS
    from tunelab.fields import field_docs
    from tunelab.methods import METHODS

    for cls in [*SECTIONS.values(), *METHODS.values()]:
        sections = {"data", "model", "train", "tune", "forgetting"}
        names = {f.name for f in dataclasses.fields(cls)} - sections
        assert names <= field_docs(cls).keys(), (cls, names - field_docs(cls).keys())
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert field_docs(SECTIONS["train."])["warmup"] in out
    assert "train.schedule = 'linear' (one of linear, cosine, constant)" in out
    run_help = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    assert "Column holding the label" in " ".join(run_help.split())
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "method.r = 8 (> 0)" in out and "Rank of the update matrices." in out
    assert "method.init = 'random' (one of random, text)" in out
    assert "no configs/prefix.yaml" in out


def test_methods_all_names_every_method():
    from tunelab.comparison import parse_methods
    from tunelab.errors import TunelabError
    from tunelab.methods import METHODS

    assert parse_methods("all") == list(METHODS)
    assert parse_methods(" lora, full") == ["lora", "full"]
    with pytest.raises(TunelabError, match="unknown method.*lorax"):
        parse_methods("lora,lorax")
