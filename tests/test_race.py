"""Racing methods in a tune: a method behind the leader outside noise stops receiving
trials (after the random start-up), one inside noise keeps an equal budget, and the tune
says where and why."""

from __future__ import annotations

import json

import pytest
from test_tune import base_cfg

from tunelab.race import Standing, out_of_race
from tunelab.tuning import tune


def test_only_a_method_outside_noise_is_stopped():
    standings = [
        Standing("lora", 0.82, 500, 4),
        Standing("full", 0.80, 500, 4),  # 2 points behind on 500 examples: within noise
        Standing("prompt", 0.60, 500, 4),  # 22 points behind: out
    ]
    out = out_of_race(standings, after=4)
    assert list(out) == ["prompt"]
    assert (
        "stopped after 4 trials: best 60.0%" in out["prompt"]
        and "leader lora 82.0%" in out["prompt"]
    )
    assert out_of_race(standings, after=5) == {}  # nobody judged before the start-up ends
    few = [Standing("lora", 0.82, 30, 4), Standing("prompt", 0.60, 30, 4)]
    assert out_of_race(few, after=4) == {}  # 30 examples: 22 points is inside the noise


@pytest.mark.slow
@pytest.mark.extended  # ~2 min of trials: `make test-extended` (CI runs it after make test)
def test_a_tune_stops_the_method_that_cannot_catch_up(tiny_model, toy_csv, tmp_path):
    # full learns the toy data in 3 epochs at 3e-3 (100% of the 30 tuning examples); LoRA at
    # 1e-9 cannot move (50%): outside noise once both finished their 4 start-up trials
    fixed = {"tune.space.full.lr": 3e-3, "tune.space.lora.lr": 1e-9, "tune.pruner": "hyperband"}
    fixed["tune.evals"] = 4  # the Optuna path as it was written for (round-robin racing)
    base = base_cfg(tiny_model, toy_csv, tmp_path, **{"tune.trials": 5, "train.epochs": 3, **fixed})
    best = tune(base, ["full", "lora"])
    lora, full = best.methods["lora"], best.methods["full"]
    assert lora.stopped.startswith("stopped after 4 trials") and not full.stopped
    assert lora.trials.complete + lora.trials.pruned + lora.trials.fail == 4
    assert full.trials.complete + full.trials.pruned + full.trials.fail == 5
    on_disk = json.loads((tmp_path / "tuning.json").read_text())["methods"]["lora"]
    assert on_disk["stopped"] == lora.stopped
    again = tune(base, ["full", "lora"])  # resumed: the stopped method stays stopped
    assert again.methods["lora"].stopped == lora.stopped


def test_seeds_go_to_the_finalists(tiny_model, toy_csv, tmp_path):
    from tunelab.comparison import Request, run_configs
    from tunelab.results import MethodTuning, TuningSummary

    base = base_cfg(tiny_model, toy_csv, tmp_path)
    tuned = TuningSummary(
        methods={
            "lora": MethodTuning(best_params={"train.lr": 1e-3}),
            "prompt": MethodTuning(best_params={"train.lr": 3e-2}, stopped="stopped at rung 1"),
            "prefix": MethodTuning(),  # every trial failed: no best value
        }
    )
    tuned.methods["lora"].best_value = 0.8
    cfgs = run_configs(Request(base, ["lora", "prompt", "full", "prefix"], seeds=3, tuned=tuned))
    assert len([c for c in cfgs if c.method_name == "prefix"]) == 1
    runs = {m: [c for c in cfgs if c.method_name == m] for m in ("lora", "prompt", "full")}
    assert len(runs["lora"]) == 3 and len(runs["full"]) == 3  # finalist; untuned: all seeds
    assert len(runs["prompt"]) == 1  # raced out: its best configuration, once
    assert runs["prompt"][0].train.lr == 3e-2 and {c.train.lr for c in runs["lora"]} == {1e-3}
