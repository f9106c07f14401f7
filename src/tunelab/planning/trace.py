"""The model without weights: built from its config under FakeTensorMode with the method
applied, and one training forward traced for the bytes autograd keeps (or, where fake tensors
cannot follow, real 1- and 2-layer copies scaled to the depth); evaluation's working set."""

from __future__ import annotations

import warnings

import torch

from tunelab import measure, sharding
from tunelab.anatomy import NotApplicable, config_layers, experts, with_layers
from tunelab.config import RunConfig
from tunelab.errors import TunelabError
from tunelab.methods import METHODS, build_method, knobs
from tunelab.models import PROBLEM_TYPE, WEIGHTS_DTYPE, apply_method, resolve
from tunelab.planning import grouped
from tunelab.quantize import NF4_BYTES, quantized_params
from tunelab.tasks.causal_lm import keeps_logits


def model_config(name: str, task: str, n_labels: int):
    """The model's config (config.json only: no weights, no tokenizer needed)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolve(name))
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise TunelabError(
            f"cannot read the config of model {name!r}: {first}. Give a built-in name, a Hub "
            f"id (needs internet) or a folder with config.json"
        ) from None
    if task == "classification":
        config.num_labels = n_labels
        config.problem_type = PROBLEM_TYPE
    if getattr(config, "pad_token_id", None) is None:  # decoders: classification needs one
        eos = getattr(config, "eos_token_id", None)  # a list in Llama 3.x, Gemma 3 (-it), ...
        config.pad_token_id = (eos[0] if eos else None) if isinstance(eos, list) else eos
        config.pad_token_id = config.pad_token_id if config.pad_token_id is not None else 0
    return config


def build(config, task: str):
    """A randomly initialised model from ``config`` (``fake_model`` for one without storage)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()
    cls = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    check_head(config, task)
    try:  # in the dtype runs train in, whatever dtype the checkpoint is stored in
        return cls.from_config(config, dtype=WEIGHTS_DTYPE)
    except Exception as e:
        raise TunelabError(f"cannot build {config.model_type} for {task}: {e}") from None


def check_head(config, task: str) -> None:
    """Refuse a task the installed transformers has no head class for, in one line."""
    import transformers
    from transformers.models.auto import modeling_auto as auto

    table = (auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES if task == "causal-lm"
             else auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)  # fmt: skip
    if config.model_type in auto.MODEL_MAPPING_NAMES and config.model_type not in table:
        head, other = (
            ("causal-LM", "task=classification") if task == "causal-lm"
            else ("sequence-classification", "task=causal-lm (the labels as words it writes)")
        )  # fmt: skip
        raise NotApplicable(
            f"{config.model_type} has no {head} head in transformers "
            f"{transformers.__version__}; use {other}"
        )


def refuse_early(cfg: RunConfig) -> None:
    """Refuse a run that cannot work before anything is loaded or written: the task setting
    (``tasks.check_task``), the precision on this device, and the method on this model,
    applied to the model built from its config alone on the meta device (no weights read:
    IA3 on a mixture of experts is refused in a second, not after loading 90 GB). A config
    that cannot be read or built here (remote code, a name the Hub must resolve) is left to
    the real load, which says why."""
    from tunelab.precision import choose_precision, device_type
    from tunelab.tasks import check_task

    check_task(cfg)
    choose_precision(cfg.train.mixed_precision, device_type(cfg.train.device))  # or refused
    applies(cfg)


def refuse_early_all(base: RunConfig, methods: list[str]) -> None:
    """``refuse_early`` for each method of a comparison or tuning, before its first run."""
    from tunelab.config import for_method

    for method in methods:
        refuse_early(for_method(base, method, {}))


def applies(cfg: RunConfig) -> None:
    """The configured method applied to the model built from its config on the meta device:
    raises ``NotApplicable`` (one line: why, and what can) if it cannot apply; a config this
    cannot read or build is left to the real load."""
    from accelerate import init_empty_weights

    try:
        config = model_config(cfg.model.name, cfg.task, 2)
        with init_empty_weights():
            model = build(config, cfg.task)
    except NotApplicable:
        raise
    except Exception:  # remote code, no network, ...: the real load says why
        return
    with warnings.catch_warnings(), init_empty_weights():
        warnings.simplefilter("ignore")
        try:
            model = apply_method(build_method(spec(cfg, cfg.method.name)), model, WEIGHTS_DTYPE)
        except TunelabError:  # NotApplicable, or a target naming the task head
            raise
        except Exception:  # what only the meta device trips on: the real run will tell
            return
    if sharding.wanted(cfg.train):  # what FSDP cannot shard (train.fsdp)
        sharding.refuse(model, cfg.model.quantize != "none")


def fake_model(config, task: str, knobs: dict, mode, frozen: torch.dtype = WEIGHTS_DTYPE):
    """The model with the method applied, its parameters fake CPU tensors of ``mode``: built
    and prepared on the meta device (peft moves adapters between devices, which fake tensors
    refuse), then every parameter swapped for a fake one (tied weights stay tied), the frozen
    ones stored in ``frozen`` as a run stores them (``models.store_frozen``)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = build(config, task)
    model.tie_weights()  # inside init_empty_weights, tied weights come out as two parameters
    with init_empty_weights():
        model = apply_method(build_method(knobs), model, frozen)
    fakes: dict[int, torch.nn.Parameter] = {}
    with mode:
        for module in model.modules():
            for name, p in list(module._parameters.items()):
                if p is None:
                    continue
                if id(p) not in fakes:
                    t = torch.empty(p.shape, dtype=p.dtype, device="cpu")
                    fakes[id(p)] = torch.nn.Parameter(t, requires_grad=p.requires_grad)
                module._parameters[name] = fakes[id(p)]
    return model


def training_batch(
    config, task: str, batch: int, length: int, device="cpu", labelled: int | None = None
) -> dict:
    """A training batch of the given shape, as the task's loop feeds the model: with a padded
    position (length-bucketed batches of several rows nearly always have one, and a mask
    with padding decides which attention kernel runs); a single row has no mask. A decoder
    with ``labelled`` tokens per row projects only that many positions per row onto the
    vocabulary (``logits_to_keep``), as the loop's ``labelled_loss`` does with its mask."""
    vocab = getattr(config, "vocab_size", 1000)
    ids = torch.randint(0, min(vocab, 1000), (batch, length), device=device)
    labels = ids if task == "causal-lm" else torch.zeros(batch, dtype=torch.long, device=device)
    out = {"input_ids": ids, "labels": labels}
    if task == "causal-lm" and labelled:
        out.update(labels=ids[:, -labelled:], logits_to_keep=labelled)
    if batch == 1:
        return out
    mask = torch.ones_like(ids)
    mask[-1, -1] = 0
    return {**out, "attention_mask": mask}


def spec(cfg: RunConfig, method: str) -> dict:
    """The configured method's knobs when it is this method, else its defaults."""
    mine = knobs(cfg.method) if cfg.method.name == method else {}
    return {"name": method, **mine, **METHODS[method].plan_knobs}


def state_bytes(model) -> dict[str, int]:
    """Weights (parameters + buffers, each storage once), gradients of the trainable
    parameters, and fused AdamW's state (exp_avg, exp_avg_sq, a float32 step per tensor)."""
    seen, weights = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        key = t.untyped_storage()._cdata
        if key not in seen:
            seen.add(key)
            weights += t.untyped_storage().nbytes()
    train = [p for p in model.parameters() if p.requires_grad]
    grads = sum(p.numel() * p.element_size() for p in train)
    return {"weights": weights, "gradients": grads, "optimizer": 2 * grads + 4 * len(train)}


def trace(
    config,
    task: str,
    knobs: dict,
    batch: int,
    length: int,
    bf16: bool,
    fast_cpu: bool,
    frozen: torch.dtype = WEIGHTS_DTYPE,
    labelled: int | None = None,
) -> dict:
    """Parameters, state bytes, activation bytes and FLOPs per token of one method on a fake
    model for a [batch, length] training batch (what ``estimate`` and the tests compare with
    real runs); a decoder's LM head on ``labelled`` positions per row where the model and
    method allow it (``keeps_logits``), else on every position. A forward fake tensors
    cannot follow (an op whose output shape depends on the data, such as ``nonzero``) has its
    activations measured on real shallow copies instead (``layer_scaled_activations``);
    ``activations_from`` says which route was taken."""
    from torch._subclasses.fake_tensor import (
        DataDependentOutputException,
        DynamicOutputShapeException,
        FakeTensorMode,
    )

    from tunelab import fast

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with warnings.catch_warnings(), grouped.traceable():  # a mixture of experts' experts
        warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecations, not ours
        model = fake_model(config, task, knobs, mode, frozen)
        with mode:
            if fast_cpu:
                fast.install(model)
            out = {
                **measure.count_params(model),
                **state_bytes(model),
                "quantized": quantized_params(model),
                "experts": [moe.n, moe.per_token] if (moe := experts(model)) else None,
                "flops_per_token": measure.flops_per_token(model)["total"],
                **sharding.units(model),
            }
            labelled = labelled if keeps_logits(model) else None
            data = training_batch(config, task, batch, length, labelled=labelled)
            try:  # traced on (fake) CPU tensors, so CPU autocast; on CUDA the ops run in bf16
                out["activations"], out["largest"] = measure.saved_activations(
                    model, data, "cpu" if bf16 else None
                )
                out["activations_from"] = "fake-tensor trace"
                return with_peak(out)
            except (DynamicOutputShapeException, DataDependentOutputException) as e:
                why = f"{type(e).__name__} ({e}) under fake tensors"
            except (RuntimeError, NotImplementedError, TypeError, ValueError) as e:
                first = (str(e).strip().splitlines() or [""])[0][:200]  # an op without a
                why = f"{type(e).__name__} ({first}) under fake tensors"  # fake kernel
        check_copies_fit(config, out["weights"], why)
        out["activations"], out["largest"], n = layer_scaled_activations(
            config, task, knobs, batch, length, bf16, fast_cpu, frozen, labelled
        )
        out["activations_from"] = f"real 1- and 2-layer copies scaled to {n} layers: {why}"
        return with_peak(out)


def check_copies_fit(config, weights: int, why: str) -> None:
    """Refuse, in one line, real 1- and 2-layer copies that would not fit in half the free
    memory (two blocks of a very wide model: the fallback is for what fake tensors miss,
    never a reason to run out of memory)."""
    import psutil

    layers = config_layers(config) or 1
    need = 2 * weights * min(1.0, 2 / layers)  # two blocks' weights, twice over (two copies)
    free = psutil.virtual_memory().available
    if need > free / 2:
        raise TunelabError(
            f"cannot plan {config.model_type}: its forward could not be traced, {why}, and real "
            f"1- and 2-layer copies would need about {need / 2**30:.1f} GiB "
            f"({free / 2**30:.1f} GiB free)"
        )


def in_nf4(t: dict, frozen: torch.dtype) -> dict:
    """The traced parts of a model traced with its frozen linear weights in ``frozen`` (the
    4-bit layers' compute dtype), those weights stored in NF4 instead (model.quantize=4bit):
    bitsandbytes' bytes per weight, the rest unchanged (its layers keep the packed weight for
    backward, not a dequantised copy)."""
    saved = round(t["quantized"] * (frozen.itemsize - NF4_BYTES))
    return with_peak({**t, "weights": t["weights"] - saved})


def with_peak(t: dict) -> dict:
    """The traced parts plus the training peak they imply (see the module docstring)."""
    temporaries = 2 * t["largest"]
    peak = t["weights"] + t["optimizer"] + max(t["activations"], t["gradients"]) + temporaries
    return {**t, "temporaries": temporaries, "peak": peak}


def per_process(t: dict, processes: int, fsdp: bool) -> dict:
    """One of ``processes`` processes' share of a traced plan (the main one's: it writes).
    FSDP: weights, gradients and AdamW state 1/N each, plus what is gathered whole at once
    while training: the root's weights (kept from forward to backward, and the all-gather's
    buffer), two blocks' (the one computing and the next, prefetched) and one block's
    gradients before their reduce-scatter; the main process also gathers the whole resumable
    checkpoint (trainable weights, best weights, AdamW state) and, at the end, the whole model
    to save, next to its shards. DDP: the whole model in each process, plus its gradient
    buckets (a second copy of the gradients)."""
    n = processes
    if n == 1:
        return t
    if not fsdp:
        return {**t, "peak": t["peak"] + t["gradients"], "buckets": t["gradients"]}
    shard = {k: -(-t[k] // n) for k in ("weights", "gradients", "optimizer")}
    gathered = 2 * t["root_weights"] + 2 * t["unit_weights"] + t["unit_gradients"]
    held = shard["weights"] + shard["optimizer"]
    train = held + max(t["activations"], shard["gradients"]) + t["temporaries"] + gathered
    write = held + shard["gradients"] + 2 * t["gradients"] + t["optimizer"]
    peak = max(train, write, held + t["weights"])
    return {**t, **shard, "gathered": gathered, "peak": peak}


def layer_scaled_activations(
    config,
    task: str,
    knobs: dict,
    batch: int,
    length: int,
    bf16: bool,
    fast_cpu: bool,
    frozen: torch.dtype = WEIGHTS_DTYPE,
    labelled: int | None = None,
) -> tuple[int, int, int]:
    """(activation bytes, largest saved tensor's bytes, layers): a real forward of 1- and
    2-layer copies of the model with the method applied, random weights, the same batch
    shape; every block adds the same
    activations, so N layers keep a1 + (N - 1) (a2 - a1). Costs the memory of two blocks, the
    embeddings and the head, never the whole model."""
    from tunelab import fast

    layers = config_layers(config)
    saved = []
    for k in (1, 2):
        torch.manual_seed(0)
        small = with_layers(config, k)
        model = apply_method(build_method(knobs), build(small, task), frozen)
        if fast_cpu:
            fast.install(model)
        data = training_batch(small, task, batch, length, labelled=labelled)
        saved.append(measure.saved_activations(model, data, "cpu" if bf16 else None))
        del model
    (a1, largest), (a2, _) = saved
    return a1 + (layers - 1) * (a2 - a1), largest, layers


def eval_working_set(config, task: str, rows: int, longest: int, word_tokens: int = 4) -> int:
    """Bytes one evaluation batch holds at once, beyond the weights (no gradients, nothing
    saved for backward): one layer's widest tensors (the MLP's inner activation and the
    attention scores, each with a copy in flight) for the rows; for a decoder scoring label
    words (``tasks.label_words``), also the key/value cache of a chunk of rows and the copy
    a word's forward extends, and the logits at the scored positions (``word_tokens`` per
    word). float32 throughout."""
    from tunelab.tasks.label_words import CACHE_BYTES, kv_bytes_per_token

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", 0) or 0
    inner = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None)
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "n_head", 1) or 1
    layer = rows * longest * max(inner or 4 * hidden, heads * longest) * 4 * 2
    if task != "causal-lm":
        return layer
    per_row = longest * kv_bytes_per_token(config)
    chunk = min(rows, max(1, CACHE_BYTES // max(1, per_row)))
    logits = chunk * word_tokens * (getattr(text, "vocab_size", 0) or 0) * 4
    return chunk * longest * max(inner or 4 * hidden, heads * longest) * 4 * 2 + (
        2 * chunk * per_row + logits
    )
