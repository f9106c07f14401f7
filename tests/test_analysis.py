"""The report's rules, on hand-made records: intervals, 'same' within noise, the
majority-class floor, verdicts and the recommendation's edge cases."""

from __future__ import annotations

import pytest

from tunelab.config import load_config
from tunelab.report.analysis import summarize_methods
from tunelab.report.stats import Estimate, binomial, ci95, same, t95
from tunelab.report.summary import analyse
from tunelab.report.verdicts import recommendation, verdicts
from tunelab.results import DataInfo, Memory, Params, RunRecord, Scores, Timing

N_VAL = N_TEST = 1000
MAJORITY = {
    "validation": Scores(accuracy=0.578, macro_f1=0.366),
    "test": Scores(accuracy=0.578, macro_f1=0.366),
}


def record(method, val, test, train_s=60.0, mem_mb=1000.0, trainable=1000, seed=0, status="ok"):
    rec = RunRecord.start(f"/x/{method}-seed{seed}", method, load_config())
    rec.data = DataInfo("d", ["neg", "pos"], 5000, N_VAL, N_TEST, MAJORITY)
    rec.params = Params(trainable, 10_000, 100 * trainable / 10_000)
    rec.timing = Timing.of(train_s, 1.0, 1.0, 5000, 100_000)
    rec.memory = Memory(int(mem_mb * 2**20), 0, "process_rss_above_baseline")
    if status != "ok":
        return rec.fail("boom")
    return rec.finish(
        best_validation=Scores(accuracy=val), test=Scores(accuracy=test, macro_f1=test)
    )


def test_t_quantiles_for_any_df():
    assert t95(1) == pytest.approx(12.706, abs=1e-3)
    assert t95(12) == pytest.approx(2.179, abs=1e-3)  # the old table answered df=10's 2.228
    assert t95(1000) == pytest.approx(1.962, abs=1e-3)


def test_intervals_seeds_or_examples():
    assert ci95([1.0, 2.0, 3.0]).half == pytest.approx(2.4842, abs=1e-3)
    # one seed on 213 test examples: one example is 0.47 pt, the interval ~6 pt
    assert 5 < binomial(80.0, 213).half < 6
    at_100 = binomial(100.0, 200)  # never a zero-width claim at 100%, never above 100%
    assert at_100.half > 0 and at_100.high == pytest.approx(100) and at_100.low < 100
    # Wilson's interval is centred between the accuracy and 50%, not on the accuracy: for
    # 170 of 213, (p + z^2/2n) / (1 + z^2/n) -/+ its half-width = 73.92% to 84.65%
    w = binomial(100 * 170 / 213, 213)
    assert w.low == pytest.approx(73.92, abs=0.01) and w.high == pytest.approx(84.65, abs=0.01)
    rows = summarize_methods([record("full", 0.8, 0.8)])
    assert rows[0]["test_acc"].half == pytest.approx(binomial(80.0, N_TEST).half)
    assert rows[0]["train_s"].half == 0  # no interval for a cost from one run


def test_half_a_point_on_one_seed_is_the_same():
    rows = summarize_methods([record("full", 0.80, 0.780), record("llrd", 0.80, 0.785, mem_mb=910)])
    assert same(rows[0]["test_acc"], rows[1]["test_acc"])
    llrd = verdicts(rows)[1]
    assert "the same test accuracy as full fine-tuning within noise" in llrd
    assert "memory" not in llrd  # 9% of CPU RSS is below the noise floor
    far = summarize_methods([record("full", 0.8, 0.80), record("lora", 0.8, 0.70, mem_mb=500)])
    lora = verdicts(far)[1]
    assert "10.0 pt below full fine-tuning" in lora and "50% less memory" in lora


def test_majority_class_runs_did_not_learn_and_are_not_ranked():
    recs = [
        record("full", 0.578, 0.578, train_s=10),
        record("lora", 0.578, 0.578, train_s=5),
        record("prompt", 0.70, 0.71, train_s=50),
    ]
    a = analyse(recs)
    assert [r.learned for r in a.rows] == [False, False, True]
    assert "did not learn" in a.verdicts[0] and "not ranked" in a.verdicts[0]
    assert a.recommendation.startswith("Recommendation: prompt:")
    assert "only method that beat the majority-class baseline" in a.recommendation
    assert a.floor["test_acc"].mean == pytest.approx(57.8)
    assert "prompt" in a.verdicts[2] and "the reference" in a.verdicts[2]


def test_recommendation_uses_validation_not_test():
    rows = summarize_methods(
        [
            record("full", 0.80, 0.70, train_s=60),
            record("lora", 0.795, 0.90, train_s=40),
            record("prompt", 0.75, 0.99, train_s=10),
        ]
    )
    text = recommendation(rows)
    assert text.startswith("Recommendation: lora:") and "also within reach: full" in text
    assert "prompt" not in text


def test_tie_on_time_is_broken_by_memory_then_parameters():
    tie = [
        record("full", 0.8, 0.8, train_s=60, mem_mb=1000, trainable=10_000),
        record("lora", 0.8, 0.8, train_s=58, mem_mb=400, trainable=100),
    ]
    text = recommendation(summarize_methods(tie))
    assert text.startswith("Recommendation: lora:") and "least memory" in text
    same_mem = [
        record("full", 0.8, 0.8, train_s=58, mem_mb=1000, trainable=10_000),
        record("lora", 0.8, 0.8, train_s=60, mem_mb=950, trainable=100),
    ]
    text = recommendation(summarize_methods(same_mem))
    assert text.startswith("Recommendation: lora:") and "fewest trainable parameters" in text
    assert "times and memory within noise" in text
    clear = [record("full", 0.8, 0.8, train_s=100), record("lora", 0.8, 0.8, train_s=50)]
    assert "fastest to train" in recommendation(summarize_methods(clear))


def test_one_method_and_all_failed():
    a = analyse([record("lora", 0.8, 0.8)])
    assert a.recommendation.startswith("Recommendation: lora:")
    assert a.verdicts == [
        "lora: 10% of the parameters trained, test accuracy 80.0%, the reference."
    ]
    failed = analyse([record("full", 0, 0, status="failed"), record("lora", 0, 0, status="x")])
    assert failed.rows == [] and failed.verdicts == []
    assert failed.recommendation == "No recommendation: no successful runs."
    assert failed.failed == ["full-seed0: failed: boom", "lora-seed0: failed: boom"]


def test_seed_intervals_decide_sameness():
    recs = [record("full", 0.80, t, seed=i) for i, t in enumerate((0.78, 0.80, 0.82))]
    recs += [record("lora", 0.80, t, seed=i) for i, t in enumerate((0.79, 0.80, 0.81))]
    rows = summarize_methods(recs)
    assert rows[0].n == 3 and rows[0]["test_acc"].half == pytest.approx(
        t95(2) * 2.0 / 3**0.5, rel=1e-6
    )
    assert same(rows[0]["test_acc"], rows[1]["test_acc"])
    assert not same(Estimate(80, 1), Estimate(70, 1))


def test_encoder_and_decoder_runs_share_a_page_and_zero_shot_is_a_floor():
    enc = record("lora", 0.80, 0.80)
    dec = record("lora", 0.75, 0.74)
    dec.config = load_config(None, ["task=causal-lm", "model.name=smollm2"])
    dec.best_validation.loss = 0.5
    dec.data.zero_shot = {
        "validation": Scores(accuracy=0.70, loss=2.0),
        "test": Scores(accuracy=0.70, macro_f1=0.7),
    }
    weak = record("prompt", 0.705, 0.70)
    weak.config = dec.config
    weak.best_validation.loss = 0.9
    weak.data.zero_shot = dec.data.zero_shot
    a = analyse([enc, dec, weak])
    names = [r.method for r in a.rows]
    assert names == [
        "lora · minilm · classification",
        "lora · smollm2 · causal-lm",
        "prompt · smollm2 · causal-lm",
    ]
    assert list(a.baselines) == ["majority class", "zero-shot smollm2"]
    # the decoder prompt run beats the majority class but not its model's zero-shot score
    assert [r.learned for r in a.rows] == [True, True, False]
    assert "val_ppl" in a.rows[1].values and a.rows[1]["val_ppl"].mean == pytest.approx(
        1.6487, 1e-3
    )


def sized(method, size, test, train_s, mem_mb=1000.0, trainable=1000):
    rec = record(method, test, test, train_s, mem_mb, trainable)
    rec.data.train = size
    rec.name = f"{method}-n{size}-seed0"
    return rec


def test_training_set_sizes_check_the_articles_table():
    """Full wins with many examples, prompt only with few: the claims say which hold."""
    recs = [
        sized("full", 100, 0.60, 2.0, 1000, 10_000),
        sized("full", 3000, 0.85, 60.0, 1000, 10_000),
        sized("llrd", 100, 0.61, 2.0, 1000, 10_000),
        sized("llrd", 3000, 0.845, 61.0, 1000, 10_000),
        sized("lora", 100, 0.58, 1.5, 700, 50),
        sized("lora", 3000, 0.80, 25.0, 700, 50),
        sized("prompt", 100, 0.605, 1.4, 650, 5),
        sized("prompt", 3000, 0.70, 30.0, 650, 5),
    ]
    a = analyse(recs)
    s = a.sizes
    assert s.sizes == [100, 3000]
    assert [r.method for r in a.rows] == ["full", "llrd", "lora", "prompt"]
    assert all(r.runs[0].data.train == 3000 for r in a.rows)  # main table: largest size only
    assert s.fits == {"full": [100, 3000], "llrd": [100, 3000], "lora": [], "prompt": [100]}
    claims = {c.split(":")[0]: c for c in s.claims}
    assert claims["full, cost high"].startswith("full, cost high: holds")
    assert "medium: does not hold" in claims["llrd, cost medium"]  # it costs what full costs
    assert "low: holds. Measured 0.42x" in claims["lora, cost low"]
    assert "high: does not hold" in claims["lora, efficacy high"]  # 5 points below the best
    assert "datasets: holds" in claims["prompt, fits small datasets"]
    assert "datasets: holds" in claims["full, fits large datasets"]
    assert "cannot be tested with one model" in claims["lora, fits large models"]


def test_one_size_is_no_size_study():
    assert analyse([record("full", 0.8, 0.8), record("lora", 0.8, 0.8)]).sizes is None


def test_times_taken_while_the_cpu_was_shared_are_not_compared():
    """The issue's report: the same runs alone (LoRA fastest) and beside another job (full
    'the fastest', LoRA '3.1x more training time'). A run whose machine was busy with other
    processes is flagged from its record, and no time verdict or time-based pick is drawn."""

    def timed(method, train_s, others_cpu_s):
        rec = record(method, 0.8, 0.8, train_s=train_s, mem_mb=1000, trainable=1000)
        rec.timing = Timing.of(train_s, 1.0, 1.0, 5000, 100_000, (2 * train_s, others_cpu_s, 2, 2))
        return rec

    alone = [timed("full", 46, 1.0), timed("lora", 34, 1.0)]
    assert not any(r.timing.contended for r in alone)
    assert "fastest to train" in recommendation(summarize_methods(alone))
    assert any("less training time" in line for line in verdicts(summarize_methods(alone)))
    shared = [timed("full", 68, 1.0), timed("lora", 209, 0.9 * 209)]  # another job: ~1 core
    assert shared[1].timing.contended and not shared[0].timing.contended
    rows = summarize_methods(shared)
    text = recommendation(rows)
    assert "fastest to train" not in text and "Training times are not compared" in text
    assert "lora (0.9 of 2 cores)" in text
    assert not any("training time" in line for line in verdicts(rows))
    # a record without the measurement (older schema, or a GPU run) is never flagged
    assert not Timing.of(10, 1, 1, 10, 10).contended


def test_a_tune_only_folder_says_what_the_trials_show():
    """No comparison runs yet: the verdicts rank each method's best trial on validation with
    the subset's noise, the recommendation says how to score them on test; trials are named
    by method and number."""
    from tunelab.report.render import markdown, run_label
    from tunelab.results import Tuning

    trials = []
    for method, vals in {"lora": [0.80, 0.82], "full": [0.81], "prompt": [0.60, 0.55]}.items():
        for i, v in enumerate(vals):
            rec = record(method, v, v)
            rec.test, rec.tuning = None, Tuning(study=method, trial=i)
            rec.config.out_dir = "/runs/tuned/trials/" + method
            trials.append(rec)
    a = analyse(trials)
    assert a.rows == [] and len(a.verdicts) == 3
    assert a.verdicts[0].startswith("lora (trial 1): validation accuracy 82.0%")
    assert "the leader" in a.verdicts[0] and "best of 2 trial(s)" in a.verdicts[0]
    assert "full (trial 0)" in a.verdicts[1] and "within noise of lora (trial 1)" in a.verdicts[1]
    assert "prompt (trial 0)" in a.verdicts[2] and "outside noise" in a.verdicts[2]
    assert a.recommendation.startswith("No recommendation yet: these are tuning trials")
    assert "tunelab compare --tune --out /runs/tuned" in a.recommendation
    assert run_label(trials[1]) == "lora trial 1"
    text = markdown("tuned", a)
    assert "No recommendation yet" in text and "## Verdicts" in text


def test_a_mixture_of_experts_shows_active_and_total_parameters():
    """The table gains "active params / token" and "total params" when a compared model is a
    mixture of experts (active below total), and only then."""
    from tunelab.report.render import markdown_table

    dense = [record("full", 0.8, 0.8), record("lora", 0.8, 0.79, trainable=10)]
    a = analyse(dense)
    assert "active params / token" not in markdown_table(a)
    moe = [record("full", 0.8, 0.8), record("lora", 0.8, 0.79, trainable=10)]
    for r in moe:
        r.params.active = 2_500
    table = markdown_table(analyse(moe))
    head = table.splitlines()[0]
    assert "active params / token" in head and "total params" in head
    assert "2,500" in table and "10,000" in table
