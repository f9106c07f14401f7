"""task=causal-lm on a tiny random Llama: answer-only loss, label-word scoring, every method
on a decoder (or a one-line refusal), predict, export to a plain transformers folder."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_overrides
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.config import load_config
from tunelab.data import Exchanges, Split
from tunelab.errors import ConfigError, TunelabError
from tunelab.models import load_model
from tunelab.tasks import prepare_data
from tunelab.tasks.causal_lm import CausalLM
from tunelab.train import run

WORDS = "data.label_words=[bad, good]"


def llama_cfg(tiny_llama, toy_csv, out, *extra, **over):
    base = {"task": "causal-lm", "train.lr": 3e-3, "train.epochs": 1, **over}
    return load_config(None, [*tiny_overrides(tiny_llama, toy_csv, out, **base), WORDS, *extra])


def test_answer_only_loss_and_label_word_scoring(tiny_llama, toy_csv, tmp_path):
    cfg = llama_cfg(tiny_llama, toy_csv, tmp_path)
    data = prepare_data(cfg)
    task, enc = data.task, data.train
    assert task.label_words == ["bad", "good"] and all(len(w) == 1 for w in task.word_ids)
    i = 0
    answer = enc.input_ids[i][enc.prompt_lengths[i] :]
    assert answer == task.word_ids[enc.labels[i]]  # the prompt ends where the answer starts
    batch = task.collate(enc, [0, 1, 2, 3], data.tokenizer.pad_token_id)
    assert (batch["labels"] != -100).sum() == 4  # one answer token per example, nothing else
    torch.manual_seed(0)
    model = load_model(tiny_llama, data.splits.label_names, lm_head=True).eval()
    loss, preds = task.forward(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    pos = batch["prompt_len"] - 1
    gold = torch.tensor([task.word_ids[y][0] for y in batch["targets"]])
    manual = torch.nn.functional.cross_entropy(logits[torch.arange(4), pos], gold)
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
    assert torch.equal(preds, task.score(model, batch)[1].argmax(-1))  # fast path = scoring


@pytest.mark.parametrize("method", ["full", "lora"])
def test_head_on_labelled_positions_gives_the_models_own_loss_and_gradients(
    method, tiny_llama, toy_csv, tmp_path
):
    """The training forward that projects only the answer positions onto the vocabulary
    (``forward_labelled``) against the model's own loss over every position (labels -100
    elsewhere), multi-token words of different lengths included: same loss to 1e-4
    relative, same predictions, same gradients."""
    from tunelab.methods import build_method
    from tunelab.tasks.causal_lm import keeps_logits

    cfg = llama_cfg(tiny_llama, toy_csv, tmp_path, "data.label_words=[utterly dreadful, good]")
    data = prepare_data(cfg)
    task = data.task
    assert len(task.word_ids[0]) > len(task.word_ids[1])
    batch = task.collate(data.train, list(range(8)), data.tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = build_method({"name": method}).prepare(
        load_model(tiny_llama, data.splits.label_names, lm_head=True)
    )
    model.train()
    assert keeps_logits(model)
    torch.manual_seed(1)  # the same dropout masks on both paths
    loss, preds = task.forward(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    task.head_on_labels = False
    torch.manual_seed(1)
    full_loss, full_preds = task.forward(model, batch)
    full_loss.backward()
    assert loss.item() == pytest.approx(full_loss.item(), rel=1e-4)
    assert torch.equal(preds, full_preds)
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6)


def test_multi_token_words_are_length_normalised(tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    task = CausalLM(["neg", "pos"], "Text: {text}\nVerdict:", ["utterly dreadful", "good"])
    enc = task.encode(Split(["a film", "another film"], None, [0, 1]), tok, 64)
    assert len(task.word_ids[0]) > 1
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    batch = task.collate(enc, [0, 1], tok.pad_token_id)
    _, scores = task.score(model, batch)
    row = enc.input_ids[0][: enc.prompt_lengths[0]] + task.word_ids[0]
    logp = model(input_ids=torch.tensor([row])).logits.log_softmax(-1)[0]
    start = enc.prompt_lengths[0]
    expected = sum(logp[start + j - 1, t] for j, t in enumerate(task.word_ids[0])) / len(
        task.word_ids[0]
    )
    assert scores[0, 0].item() == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize(
    "template, words, message",
    [
        ("Review: {txt}\nSentiment:", None, "data.template must contain {text}"),
        ("{text} ->", ["bad"], "data.label_words has 1 words for 2 labels"),
    ],
)
def test_bad_task_settings_are_refused(template, words, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        CausalLM(["neg", "pos"], template, words)


def test_label_words_that_tokenize_to_nothing_are_refused(tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    with pytest.raises(ConfigError, match="tokenizes to nothing"):
        CausalLM(["neg", "pos"], "{text}", ["  ", "good"]).tokenize_words(tok)
    with pytest.raises(ConfigError, match="tokenize the same"):
        CausalLM(["neg", "pos"], "{text}", ["good", " good"]).tokenize_words(tok)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "llrd", "freeze", "lora", "prompt", "ia3"])
def test_every_method_trains_on_a_decoder(method, precision, tiny_llama, toy_csv, tmp_path):
    lr = {"prompt": 0.1, "ia3": 3e-2}.get(method, 3e-3)  # scaling vectors, soft prompts: larger
    over = {"method.name": method, "train.lr": lr, "train.mixed_precision": precision}
    rec = run(llama_cfg(tiny_llama, toy_csv, tmp_path, **over))
    assert rec.ok and rec.test and rec.env.precision == precision
    zs, n = rec.data.zero_shot["validation"].accuracy, rec.data.validation  # k of n rows
    assert 0 <= zs <= 1 and abs(zs * n - round(zs * n)) < 1e-6, (zs, n)
    losses = [r["train_loss"] for r in rec.metrics or _rows(tmp_path / f"{method}-causal-lm-seed0")]
    assert losses[-1] < losses[0]


def _rows(run_dir):
    from tunelab.results import read_metrics

    return [r for r in read_metrics(run_dir) if "train_loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("method, reason", [("bitfit", "has none"), ("prefix", "past_key_values")])
def test_methods_that_cannot_work_on_llama_say_why(method, reason, tiny_llama, toy_csv, tmp_path):
    from tunelab.errors import RunFailed, TunelabError

    with pytest.raises(TunelabError, match=reason) as refused:  # refused before the run starts
        run(llama_cfg(tiny_llama, toy_csv, tmp_path, **{"method.name": method}))
    assert not isinstance(refused.value, RunFailed) and "\n" not in str(refused.value)
    assert not list(tmp_path.glob(f"{method}*"))  # no run folder, nothing recorded


@pytest.mark.slow
def test_predict_and_export_a_decoder_run(tiny_llama, toy_csv, tmp_path, capsys):
    from tunelab.cli import main
    from tunelab.inference import load_run_model, predict

    cfg = llama_cfg(tiny_llama, toy_csv, tmp_path, **{"method.name": "lora", "train.lr": 1e-2})
    run(cfg)
    run_dir = tmp_path / "lora-causal-lm-seed0"
    rows = predict(run_dir, ["the film was great", "dull plot"], max_new_tokens=3)
    assert [r["label"] for r in rows] == [
        ["neg", "pos"][int(r["words"]["good"] > r["words"]["bad"])] for r in rows
    ]
    assert all(sum(r["words"].values()) == pytest.approx(1) and "generated" in r for r in rows)
    assert main(["export", str(run_dir), str(tmp_path / "plain")]) == 0
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "plain").eval()  # no peft
    assert not any("lora" in n for n, _ in plain.named_parameters())
    peft_model, tok = load_run_model(run_dir)
    data = prepare_data(cfg)
    batch = data.task.collate(data.test, list(range(16)), tok.pad_token_id)
    with torch.no_grad():
        a, b = data.task.score(peft_model, batch)[1], data.task.score(plain, batch)[1]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert main(["export", str(run_dir), str(tmp_path / "plain")]) == 2  # not empty: refused
    assert "is not empty" in capsys.readouterr().err


@pytest.mark.slow
def test_instruction_data_trains_on_the_response(tiny_llama, tmp_path):
    """prompt + response rows: loss on the response only, validation loss / perplexity,
    greedy generations kept at each validation, the report without accuracy columns."""
    from tunelab.report import build_report

    rows = [
        {"prompt": f"Repeat the word {w}.", "response": f"{w} {w}"}
        for w in ["apple", "river", "stone", "cloud", "green", "table"] * 20
    ]
    path = tmp_path / "inst.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    over = [
        f"model.name={tiny_llama}",
        f"data.dataset={path}",
        "data.response_column=response",
        "task=causal-lm",
        f"out_dir={tmp_path / 'runs'}",
        "tracker=none",
        "train.epochs=2",
        "train.batch_size=16",
        "train.lr=3e-3",
        "method=full",
    ]
    cfg = load_config(None, over)
    data = prepare_data(cfg)
    batch = data.task.collate(data.train, [0, 1], data.tokenizer.pad_token_id)
    answer = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert isinstance(data.splits.train, Exchanges) and not hasattr(data.splits.train, "labels")
    first = data.splits.train.responses[0]
    expected = data.tokenizer(first, add_special_tokens=False)["input_ids"]
    assert answer == expected + [data.tokenizer.eos_token_id]  # the response, nothing else
    rec = run(cfg)
    assert rec.ok and rec.test.accuracy is None and rec.test.perplexity > 1
    assert rec.best_validation.loss < rec.data.zero_shot["validation"].loss
    assert len(rec.curve[-1]["samples"]) == 3 and rec.curve[-1]["samples"][0]["prompt"]
    html, md = build_report(tmp_path / "runs")
    text = md.read_text()
    assert "| full | 1 |" in text and "validation loss" in text
    assert "Generated samples" in html.read_text()
    from tunelab.inference import predict

    (reply,) = predict(tmp_path / "runs" / "full-causal-lm-seed0", ["Repeat the word apple."], 4)
    assert reply["prompt"] == "Repeat the word apple." and isinstance(reply["response"], str)
    with pytest.raises(TunelabError, match="response column .answer. not found"):
        prepare_data(load_config(None, [*over, "data.response_column=answer"]))


@pytest.mark.parametrize("method", ["full", "lora"])
def test_sft_head_on_the_response_only_matches_the_models_own_loss(method, tiny_llama, tmp_path):
    """SFT rows of different prompt and response lengths: the LM head on the response
    positions only (``labelled_loss``) against the model's own loss over every position
    (labels -100 on the prompt and padding): same loss to 1e-4 relative, same gradients."""
    from tunelab.methods import build_method
    from tunelab.tasks.causal_lm import keeps_logits

    rows = [
        {"prompt": "Say " + "a" * (i % 5 + 1), "response": "b " * (i % 3 + 1)} for i in range(8)
    ]
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows * 10))
    over = [f"model.name={tiny_llama}", f"data.dataset={path}", "data.response_column=response",
            "task=causal-lm", f"out_dir={tmp_path}", "tracker=none"]  # fmt: skip
    data = prepare_data(load_config(None, over))
    task = data.task
    batch = task.collate(data.train, list(range(8)), data.tokenizer.pad_token_id)
    assert len({int((r != -100).sum()) for r in batch["labels"]}) > 1  # ragged responses
    torch.manual_seed(0)
    model = build_method({"name": method}).prepare(load_model(tiny_llama, ["text"], lm_head=True))
    model.train()
    assert keeps_logits(model) and task.head_on_labels
    losses, grads = [], []
    for on_labels in (True, False):
        task.head_on_labels = on_labels
        torch.manual_seed(1)  # the same dropout masks on both paths
        loss, _ = task.forward(model, batch)
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        model.zero_grad()
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6)


def test_plan_traces_the_head_on_the_labelled_positions(tiny_llama, toy_csv, tmp_path):
    """The plan's activations for classification as text (one answer token per row) equal
    what autograd keeps in the loop's real training forward (the LM head on the labelled
    positions), far below the head over every position, which it counted before."""
    from tunelab import planning as plan
    from tunelab.methods import build_method

    cfg = llama_cfg(tiny_llama, toy_csv, tmp_path)
    data = prepare_data(cfg)
    batch = data.task.collate(data.train, list(range(8)), data.tokenizer.pad_token_id)
    b, length = batch["input_ids"].shape
    torch.manual_seed(0)
    model = build_method({"name": "lora"}).prepare(
        load_model(tiny_llama, data.splits.label_names, lm_head=True)
    )
    model.train()
    seen: dict[int, int] = {}

    def pack(t):
        seen.setdefault(t.untyped_storage()._cdata, t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        data.task.forward(model, batch)
    weights = {p.untyped_storage()._cdata for p in model.parameters()}
    real = sum(n for k, n in seen.items() if k not in weights)
    config = plan.model_config(tiny_llama, "causal-lm", 2)
    t = plan.trace(config, "causal-lm", {"name": "lora"}, b, length, False, False, labelled=1)
    every = plan.trace(config, "causal-lm", {"name": "lora"}, b, length, False, False)
    assert abs(t["activations"] - real) <= 0.02 * real, (t["activations"], real)
    assert every["activations"] > 2 * t["activations"]  # 49k-word logits at every position
