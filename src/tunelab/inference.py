"""Use a finished run: load its saved model or adapter, classify or generate, export a plain
Hugging Face folder with adapters merged."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from tunelab.anatomy import unwrap
from tunelab.config import RunConfig, config_from_dict, yaml_load
from tunelab.errors import TunelabError
from tunelab.guard import fault
from tunelab.models import (
    BUILTIN,
    frozen_dtype,
    resolve,
    safe_load,
    same_kernels_everywhere,
    store_frozen,
)
from tunelab.precision import adapters_follow_autocast, autocast, choose_precision, device_type
from tunelab.quantize import quantization


def run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise TunelabError(f"{str(run_dir)!r} is not a run folder (no config.yaml)")
    cfg = config_from_dict(yaml_load(path.read_text()) or {})  # a run's: as it was written
    if cfg.task == "causal-lm" and not cfg.data.template:  # built from its data: as recorded
        rec = _record(run_dir)
        if rec and rec.data.template:
            cfg.data.template = rec.data.template
    return cfg


def _record(run_dir: str | Path):
    """The run's record, or None when it has no readable one."""
    from tunelab.results import read_record

    try:
        return read_record(Path(run_dir))
    except TunelabError:
        return None


def run_precision(run_dir: str | Path) -> str:
    """The precision a run trained and scored in (its record's ``env.precision``); a run
    without a readable record: what its config asks for on this machine's device."""
    rec = _record(run_dir)
    if rec is not None and rec.env is not None and rec.env.precision:
        return rec.env.precision
    tc = run_config(run_dir).train
    return choose_precision(tc.mixed_precision, device_type(tc.device))[0]


def load_run_model(run_dir: str | Path, quantized: bool = True, device: str | None = None):
    """(model, tokenizer) from ``RUN_DIR/model``: a PEFT adapter or a full HF model, with a
    classification head or (task=causal-lm) its language-model head, on ``device`` ("cpu",
    "cuda"; default: a CUDA GPU when there is one). Loaded by the same safe loader as the run
    (``models.safe_load``) under the run's own model.allow_pickle and
    model.trust_remote_code; an adapter's base model is the one the run recorded
    (config.yaml), never whatever adapter_config.json names: a folder whose adapter points
    elsewhere is refused. A run with model.quantize gets its base quantised as it trained
    (on ``device``), unless not ``quantized`` (export merges into the full-precision base).
    Score it under the run's autocast: ``run_precision``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    folder = Path(run_dir) / "model"
    if not (folder / "config.json").exists():
        raise TunelabError(
            f"{str(run_dir)!r} holds no saved model (expected {folder}/config.json);"
            f" is it a finished run folder with train.save_model=true?"
        )
    cfg = run_config(run_dir)
    mc, where = cfg.model, torch.device(device_type(device or "auto"))
    auto = AutoModelForCausalLM if cfg.task == "causal-lm" else AutoModelForSequenceClassification
    tok = _tokenizer(folder, mc.trust_remote_code)
    if not (folder / "adapter_config.json").exists():
        model = safe_load(auto, str(folder), mc.trust_remote_code, mc.allow_pickle)
        return model.to(where).eval(), tok
    from peft import PeftConfig, PeftModel

    check_adapter(folder, mc.name, mc.allow_pickle)
    config = AutoConfig.from_pretrained(folder)  # carries num_labels and id2label
    if hasattr(config, "quantization_config"):  # a 4-bit run's: the base is loaded unquantised
        del config.quantization_config  # and quantised as the run did (or not: export)
    q = quantization(mc, cfg.method, run_precision(run_dir), where) if quantized else None
    extra = {"quantization_config": q, "device_map": {"": where}} if q else {}
    base = safe_load(auto, mc.name, mc.trust_remote_code, mc.allow_pickle, config=config, **extra)
    same_kernels_everywhere(base)
    # trainable as in the run (the adapter and the task head), so the frozen rest is stored as
    # the run stored it: LoHa, LoKr, OFT and DoRA combine the stored base weight with their
    # update before the product, so a bf16 base gives other numbers than an fp32 one
    prompts = PeftConfig.from_pretrained(folder).is_prompt_learning  # peft: never trainable
    model = PeftModel.from_pretrained(base, folder, is_trainable=not prompts)
    store_frozen(model, frozen_dtype(mc.base_dtype, run_precision(run_dir), cfg.method))
    with torch.no_grad():  # the run's values in fp32 storage: usable outside autocast too
        for p in model.parameters():
            if p.dtype in (torch.bfloat16, torch.float16):
                p.data = p.data.float()
    model = adapters_follow_autocast(model.requires_grad_(False).eval())
    if not q:  # a 4-bit base is already where it was loaded and cannot move
        model.to(where)
    tuner = model.base_model
    if getattr(model.peft_config["default"], "orth_reg_weight", None) is not None:
        # AdaLoRA's forward reads the trainable adapter's name to add its regulariser to a
        # loss even in inference mode, where peft never sets it (peft issue #571); a trained
        # model's loss is the task's, without the training regulariser, as the run scored it
        tuner.trainable_adapter_name = "default"
        model.peft_config["default"].orth_reg_weight = 0.0
    return model, tok


def _tokenizer(folder: Path, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise TunelabError(f"cannot load the run's tokenizer from {folder}: {e}") from e


def check_adapter(folder: Path, model_name: str, allow_pickle: bool) -> None:
    """Refuse an adapter whose config names another base model than the run recorded, or
    whose weights are a pickle (unless model.allow_pickle)."""
    import json

    try:
        named = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TunelabError(f"{folder}/adapter_config.json is unreadable: {e}") from e
    ours = resolve(model_name)
    same = named in (model_name, ours) or (
        model_name in BUILTIN and Path(str(named)).name == Path(ours).name  # moved machine
    )
    if not same:
        raise TunelabError(
            f"{folder}/adapter_config.json names the base model {named!r}, but the run "
            f"trained on {model_name!r} (its config.yaml): the folder was changed; refusing to "
            f"load another model"
        )
    if not (folder / "adapter_model.safetensors").exists() and not allow_pickle:
        raise TunelabError(
            f"{folder} has no adapter_model.safetensors (a pickled adapter can run code when "
            f"loaded); set model.allow_pickle=true in the run's config.yaml if you trust it"
        )


@torch.inference_mode()
def predict(
    run_dir: str | Path, texts: list[str], max_new_tokens: int = 0, device: str | None = None
) -> list[dict]:
    """Label and score per text, in the run's own precision, on ``device`` (default: a CUDA
    GPU when there is one); for a causal-LM run, the probability of every label word (and,
    with ``max_new_tokens``, the model's own greedy continuation of the prompt)."""
    cfg = run_config(run_dir)
    model, tok = load_run_model(run_dir, device=device)
    with autocast(run_precision(run_dir), model.device):  # as the run scored its test split
        return _predict(cfg, model, tok, texts, max_new_tokens)


def _predict(cfg: RunConfig, model, tok, texts: list[str], max_new_tokens: int) -> list[dict]:
    from tunelab.tasks import task_class

    task = task_class(cfg)
    if not task.has_accuracy:  # instruction data: the model writes a response
        return _generate(model, tok, texts, max_new_tokens or 64)
    if task.lm_head:  # label words scored by the language model
        return _predict_words(cfg, model, tok, texts, max_new_tokens)
    enc = tok(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    probs = model(**enc.to(model.device)).logits.float().softmax(-1)
    base = unwrap(model)
    id2label = base.config.id2label
    out = []
    for text, p in zip(texts, probs, strict=True):
        i = int(p.argmax())
        out.append({"text": text, "label": id2label[i], "score": float(p[i])})
    return out


def _predict_words(cfg: RunConfig, model, tok, texts, max_new_tokens: int) -> list[dict]:
    from tunelab.data import Split
    from tunelab.tasks import build_task
    from tunelab.tasks.instruction import respond

    base = unwrap(model)
    labels = [base.config.id2label[i] for i in sorted(base.config.id2label)]  # saved by the run
    task = build_task(cfg, labels)
    enc = task.encode(Split(list(texts), None, [0] * len(texts)), tok, cfg.data.max_length)
    batch = task.collate(enc, list(range(len(texts))), tok.pad_token_id or 0)
    batch = {k: v.to(model.device) for k, v in batch.items()}
    probs = task.score(model, batch)[1].float().softmax(-1)
    out = []
    for i, text in enumerate(texts):
        k = int(probs[i].argmax())
        row = {
            "text": text,
            "label": task.label_names[k],
            "score": float(probs[i, k]),
            "words": {w: float(p) for w, p in zip(task.label_words, probs[i], strict=True)},
        }
        if max_new_tokens:
            prompt = enc.input_ids[i][: enc.prompt_lengths[i]]
            row["generated"] = respond(model, tok, prompt, max_new_tokens)
        out.append(row)
    return out


def _generate(model, tok, prompts: list[str], max_new_tokens: int) -> list[dict]:
    """Instruction runs: the model's greedy response to each prompt (its chat template)."""
    from tunelab.tasks.instruction import Instruction, respond

    task = Instruction([])
    return [
        {"prompt": p, "response": respond(model, tok, task.prompt_ids(tok, p), max_new_tokens)}
        for p in prompts
    ]


def plain_modules(model):
    """``model`` with any head peft still wraps (``ModulesToSaveWrapper``: LN tuning's
    ``merge_and_unload`` leaves them) replaced by the trained module it holds, so the folder
    has the plain transformers keys."""
    from peft.utils import ModulesToSaveWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent, _, leaf = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            setattr(owner, leaf, module.modules_to_save["default"])
    return model


def export(run_dir: str | Path, out: str | Path) -> Path:
    """A standalone HF folder (safetensors + tokenizer) that plain transformers loads with no
    peft: LoRA / IA3 adapters merged into the base weights, a full model copied. Written to a
    temporary folder renamed into place: ``out`` is whole or absent (a failed export can be
    retried as it is)."""
    from tunelab.files import atomic_folder

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TunelabError(f"export folder {str(out)!r} is not empty; pick a new one")
    folder = Path(run_dir) / "model"
    model, tok = load_run_model(run_dir, quantized=False, device="cpu")  # full precision
    adapter = (folder / "adapter_config.json").exists()
    if adapter and (
        not hasattr(model, "merge_and_unload") or model.peft_config["default"].is_prompt_learning
    ):
        raise TunelabError(
            "this run trained virtual tokens (prompt/prefix tuning): there are no weights to "
            "merge into the model; load it with peft (PeftModel.from_pretrained)"
        )
    with atomic_folder(out) as tmp:
        if adapter:
            plain_modules(model.merge_and_unload()).save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
        else:
            shutil.copytree(folder, tmp, dirs_exist_ok=True)
        fault("export")  # the kill tests: written, not yet in place
    return out


def score_run(run_dir: str | Path, split: str = "test", device: str | None = None):
    """A finished run's saved model, reloaded by ``load_run_model``, scored on a split of its
    own data (``validation`` or ``test``) as the run scored it: same batches, same precision.
    Its accuracy equals the record's; its loss is within ``precision.RELOAD_RTOL``."""
    from tunelab.measure import evaluate
    from tunelab.tasks import prepare_data

    if split not in ("validation", "test"):
        raise TunelabError(f"split must be validation or test, got {split!r}")
    cfg = run_config(run_dir)
    model, _ = load_run_model(run_dir, device=device)
    data = prepare_data(cfg)
    args = (data.tokenizer.pad_token_id, model.device, run_precision(run_dir), split)
    return evaluate(model, data.task, getattr(data, split), cfg.train.eval_batch_size, *args)
