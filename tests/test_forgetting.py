"""Forgetting (tunelab.forgetting): a decoder run records the change of its general-text loss
with an interval; the before / after losses equal an independent computation (transformers' own
loss of each passage, base model and saved model); a run trained on the general sample itself
(negative control) forgets less than nothing, one at a destructive learning rate far more; an
encoder classifier says why it is not measured."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from tests.conftest import tiny_overrides
from tunelab.config import load_config
from tunelab.forgetting import ForgettingConfig, builtin_text, passages
from tunelab.train import run

pytestmark = pytest.mark.slow  # real (tiny) training runs

SAMPLE = 24  # passages of the general-text sample in these tests


def sft_rows(texts: list[str]) -> list[dict]:
    return [{"prompt": "Say:", "response": t} for t in texts]


def decoder_run(tiny_llama, tmp_path, rows, lr: float, epochs: int = 2, **extra) -> object:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    over = [f"model.name={tiny_llama}", f"data.dataset={path}", "data.response_column=response",
            "task=causal-lm", f"out_dir={tmp_path / 'runs'}", "tracker=none",
            f"train.epochs={epochs}", "train.batch_size=8", f"train.lr={lr}", "method=full",
            "train.mixed_precision=no", "train.trend_points=0", f"forgetting.examples={SAMPLE}",
            "forgetting.max_length=64", *[f"{k}={v}" for k, v in extra.items()]]  # fmt: skip
    return run(load_config(None, over))


def hf_losses(folder: str, chunks: list[list[int]]) -> list[float]:
    """Each passage's loss as transformers computes it (labels = the passage, one at a time:
    no padding, no code of ours)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return [model(input_ids=torch.tensor([c]), labels=torch.tensor([c])).loss.item()
                for c in chunks]  # fmt: skip


def test_losses_match_an_independent_computation(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    rows = sft_rows([f"the {w} is on the table" for w in ["cup", "pen", "book", "lamp"] * 12])
    rec = decoder_run(tiny_llama, tmp_path, rows, lr=3e-3)
    f = rec.forgetting
    assert f.passages == SAMPLE and f.tokens == SAMPLE * 64 and not f.skipped
    from transformers import AutoTokenizer

    chunks = passages(ForgettingConfig(examples=SAMPLE, max_length=64),
                      AutoTokenizer.from_pretrained(tiny_llama))  # fmt: skip
    before = statistics.fmean(hf_losses(tiny_llama, chunks))
    after = statistics.fmean(hf_losses(str(tmp_path / "runs" / rec.name / "model"), chunks))
    assert f.before == pytest.approx(before, rel=1e-5)
    assert f.after == pytest.approx(after, rel=1e-5)
    assert f.change == pytest.approx(after - before, abs=1e-5)
    assert f.low <= f.change <= f.high and f.high - f.low > 0
    # the base model's losses were cached on disk: a second run reads them
    assert len(list((tmp_path / "cache" / "forgetting").glob("*.json"))) == 1


@pytest.fixture(scope="module")
def small_llama(smollm2_tokenizer, tmp_path_factory) -> str:
    """A 2-layer, hidden-64 Llama with random weights (the hidden-16 one learns text too slowly
    for the controls)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer)
    folder = tmp_path_factory.mktemp("small-llama")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)  # fmt: skip
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_training_on_the_sample_forgets_less_than_nothing_and_a_huge_lr_far_more(
    small_llama, tmp_path, monkeypatch
):
    """Negative control: SFT on the general sample itself lowers its loss (the whole interval
    below zero); a destructive learning rate on unrelated data raises it far above (measured
    here: about -3.9 and +50 nats per token)."""
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    lines = [x for x in builtin_text().splitlines() if len(x) > 30][:96]
    sample = tmp_path / "sample.txt"
    sample.write_text("\n".join(lines))
    learned = decoder_run(small_llama, tmp_path / "a", sft_rows(lines), lr=3e-3, epochs=4,
                          **{"forgetting.dataset": str(sample)})  # fmt: skip
    assert learned.forgetting.high < -1.0, learned.forgetting
    rows = sft_rows(["zq zq zq zq" for _ in range(48)])
    wrecked = decoder_run(small_llama, tmp_path / "b", rows, lr=0.5, epochs=2,
                          **{"train.grad_clip": 0})  # fmt: skip
    assert wrecked.forgetting.low > 5.0, wrecked.forgetting  # nats per token


def test_an_encoder_without_a_masked_lm_head_says_why_it_is_not_measured(
    tiny_model, toy_csv, tmp_path
):
    over = tiny_overrides(tiny_model, toy_csv, tmp_path, **{"train.epochs": 1})
    rec = run(load_config(None, over))  # its checkpoint: a classifier, like MiniLM's
    assert rec.forgetting.change is None
    assert "no masked-LM head (no cls weights" in rec.forgetting.skipped


@pytest.fixture(scope="module")
def tiny_mlm_bert(tmp_path_factory) -> str:
    """A tiny BERT saved with its masked-LM head (as bert-base-uncased is), random weights."""
    from transformers import BertForMaskedLM

    from tests.conftest import tiny_bert_config
    from tunelab.models import load_tokenizer

    folder = tmp_path_factory.mktemp("tiny-mlm-bert")
    torch.manual_seed(0)
    BertForMaskedLM(tiny_bert_config()).save_pretrained(folder)
    load_tokenizer("minilm").save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_an_encoder_is_measured_with_its_own_masked_lm_head(
    tiny_mlm_bert, toy_csv, tmp_path, monkeypatch, method
):
    """The encoder's forgetting equals transformers' own masked-LM loss (labels=) of the same
    masked passages, on the base model and on the base head over the trained backbone."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertForMaskedLM

    from tunelab.encoder_head import masked

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    over = tiny_overrides(tiny_mlm_bert, toy_csv, tmp_path / "runs", **{
        "train.epochs": 2, "train.lr": 1e-2, "method.name": method,
        "forgetting.examples": SAMPLE, "forgetting.max_length": 64})  # fmt: skip
    rec = run(load_config(None, over))
    f = rec.forgetting
    assert f.kind == "masked" and not f.skipped and f.passages == SAMPLE
    tok = AutoTokenizer.from_pretrained(tiny_mlm_bert)
    chunks = passages(ForgettingConfig(examples=SAMPLE, max_length=62), tok)
    items = [masked(c, tok, seed=i) for i, c in enumerate(chunks)]
    assert all(sum(y != -100 for y in labels) >= 1 for _, labels in items)
    assert all(x.count(tok.mask_token_id) == sum(y != -100 for y in ys) for x, ys in items)
    mlm = BertForMaskedLM.from_pretrained(tiny_mlm_bert).eval()

    def hf(model) -> float:
        with torch.no_grad():
            return statistics.fmean(
                model(input_ids=torch.tensor([x]), labels=torch.tensor([y])).loss.item()
                for x, y in items)  # fmt: skip

    assert f.before == pytest.approx(hf(mlm), rel=1e-5)
    saved = tmp_path / "runs" / rec.name / "model"
    if method == "full":  # the trained backbone's weights under the base head
        trained = AutoModelForSequenceClassification.from_pretrained(saved)
    else:
        from peft import PeftModel

        base = AutoModelForSequenceClassification.from_pretrained(tiny_mlm_bert, num_labels=2)
        trained = PeftModel.from_pretrained(base, saved).merge_and_unload()
    mlm.bert.load_state_dict(trained.bert.state_dict(), strict=False)  # (no pooler in the MLM)
    assert f.after == pytest.approx(hf(mlm), rel=1e-4)
    # random weights know no English (loss ~ ln 30522 either side): training moved it, no sign
    assert abs(f.change) > 1e-4 and f.low <= f.change <= f.high


def test_a_users_own_sample_and_a_bad_one(tiny_llama, tmp_path):
    from transformers import AutoTokenizer

    from tunelab.errors import ConfigError

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    own = tmp_path / "own.jsonl"
    own.write_text("\n".join(json.dumps({"text": f"line {i} of my own text"}) for i in range(30)))
    got = passages(ForgettingConfig(dataset=str(own), examples=10), tok)
    assert len(got) == 10 and got[0] == tok("line 0 of my own text", add_special_tokens=False)[
        "input_ids"]  # fmt: skip
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"body": "x"}))
    with pytest.raises(ConfigError, match="no `text` column"):
        passages(ForgettingConfig(dataset=str(bad)), tok)


def test_the_comparison_shows_forgetting_its_interval_a_verdict_and_the_plot(
    small_llama, toy_csv, tmp_path, monkeypatch
):
    import tunelab

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    over = tiny_overrides(small_llama, toy_csv, tmp_path / "runs", **{
        "task": "causal-lm", "train.epochs": 3, "forgetting.examples": 8, "train.lr": 3e-3,
        "data.max_train_examples": 160, "data.max_eval_examples": 64})  # fmt: skip
    cmp = tunelab.compare("full,llrd", *over)
    assert not cmp.failed
    col = "forgetting (Δ loss)"
    full = next(r for r in cmp.records if r.method == "full").forgetting
    row = cmp.table.set_index("method").loc["full"]  # from the record, with its interval
    assert row["forgetting"] == pytest.approx(full.change)
    assert row["forgetting_ci95"] == pytest.approx((full.high - full.low) / 2)
    assert any("forgetting" in v for v in cmp.analysis.verdicts), cmp.analysis.verdicts
    html = (tmp_path / "runs" / "report.html").read_text()
    assert "learning-forgetting" in html and col in html


def forgetting_tune(tiny_llama, toy_csv, out, **extra):
    over = tiny_overrides(tiny_llama, toy_csv, out, **{
        "task": "causal-lm", "train.epochs": 1, "data.max_train_examples": 96,
        "data.max_eval_examples": 32, "tune.trials": 5, "tune.pruner": "none", "tune.evals": 2,
        "forgetting.examples": 6, "forgetting.max_length": 32,
        "tune.space": "{full: {lr: [1.0e-4, 0.3]}}", **extra})  # fmt: skip
    return load_config(None, over)


def test_tune_against_forgetting_gives_the_front_and_chooses_within_a_limit(
    tiny_llama, toy_csv, tmp_path, monkeypatch
):
    import optuna

    from tunelab.api import tune_config
    from tunelab.results import TuningSummary, load_records
    from tunelab.tuning import storage_for

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    cfg = forgetting_tune(tiny_llama, toy_csv, tmp_path, **{"forgetting.objective": "true"})
    tune_config(cfg, ["full"])
    recs = {r.tuning.trial: r for r in load_records(tmp_path / "trials") if r.ok}
    assert len(recs) == 5  # pruner none: every trial to the end, each measured its forgetting
    pts = {n: (r.best_validation.accuracy, r.forgetting.change) for n, r in recs.items()}
    assert all(f is not None for _, f in pts.values()) and len({f for _, f in pts.values()}) > 1
    on_front = {  # by hand: no other trial as good on both and better on one
        n for n, (v, f) in pts.items()
        if not any(w >= v and g <= f and (w > v or g < f) for w, g in pts.values())
    }  # fmt: skip
    summary = TuningSummary.read(tmp_path)
    full = summary.methods["full"]
    assert summary.forgetting == "objective" and {p["trial"] for p in full.front} == on_front
    assert full.best_trial == max(pts, key=lambda n: (pts[n][0], -pts[n][1], -n))
    study = optuna.load_study(study_name="full", storage=storage_for(cfg))
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    for t in study.trials:  # the study was told both values, as the records hold them
        assert t.values == pytest.approx(list(pts[t.number]))
    page = (tmp_path / "report.html").read_text()
    assert "tune-forgetting" in page and "Pareto fronts (validation, forgetting)" in page

    fs = sorted(f for _, f in pts.values())
    limit = (fs[0] + fs[1]) / 2  # only the least-forgetting trial is within
    again = forgetting_tune(tiny_llama, toy_csv, tmp_path, **{
        "forgetting.objective": "true", "forgetting.limit": limit})  # fmt: skip
    tune_config(again, ["full"])  # the same study, chosen again: no new trial
    assert len([r for r in load_records(tmp_path / "trials") if r.ok]) == 5
    chosen = TuningSummary.read(tmp_path).methods["full"]
    assert chosen.best_trial == min(pts, key=lambda n: pts[n][1])
    assert chosen.best_params["train.lr"] == recs[chosen.best_trial].tuning.params["train.lr"]
    below = forgetting_tune(tiny_llama, toy_csv, tmp_path, **{
        "forgetting.objective": "true", "forgetting.limit": fs[0] - 1.0})  # fmt: skip
    tune_config(below, ["full"])  # none within: the one that comes closest, said so
    assert TuningSummary.read(tmp_path).methods["full"].best_trial == chosen.best_trial
    assert "no trial within the limit" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"forgetting.objective": "true", "tune.pruner": "halving"}, "needs tune.pruner=none"),
        ({"forgetting.limit": "0.1", "tune.pruner": "halving"}, "too few to choose"),
        ({"forgetting.objective": "true", "task": "classification"}, "classification head"),
        ({"forgetting.limit": "0.1", "forgetting.enabled": "false"}, "forgetting.enabled"),
    ],
)
def test_tuning_against_forgetting_refuses_what_cannot_work(
    tiny_llama, toy_csv, tmp_path, extra, message
):
    from tunelab.errors import ConfigError
    from tunelab.tuning import tune

    with pytest.raises(ConfigError, match=message):
        tune(forgetting_tune(tiny_llama, toy_csv, tmp_path, **extra), ["full"])
    assert not (tmp_path / "trials").exists()  # refused before any trial
