"""Run configuration: dataclasses are the single source of truth.

YAML files and ``key=value`` command-line overrides only *override* these defaults. Each field
carries its type (``Literal`` for a choice, ``Annotated[..., Range]`` for a bounded number) and
the docstring written under it, which is its documentation: ``tunelab config``, the CLI help
and ``tunelab methods`` print those docstrings. Values are checked here, once, by the same code
for config sections and method knobs, with messages that name the key and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from tunelab.errors import ConfigError
from tunelab.fields import NonNegative, Positive, Range, apply_fields, field_docs
from tunelab.forgetting import ForgettingConfig
from tunelab.methods import METHODS, Method, build_method, knobs, method_dict


@dataclass
class DataConfig:
    dataset: str = "rotten-tomatoes"
    """Built-in name (rotten-tomatoes), a Hugging Face dataset id (imdb, glue/sst2) or a local
    .csv/.tsv/.jsonl/.json/.parquet file."""
    text_column: str | None = None
    """Column holding the text; guessed (text, sentence, review, ...) when unset."""
    text_pair_column: str | None = None
    """Optional second text column for sentence-pair tasks."""
    label_column: str | None = None
    """Column holding the label; guessed (label, labels, category, ...) when unset."""
    max_length: Annotated[int, Positive] = 128
    """Truncate texts to this many tokens."""
    max_train_examples: Annotated[int | None, Positive] = None
    """Use only the first N training examples (after the deterministic shuffle/split)."""
    max_eval_examples: Annotated[int | None, Positive] = None
    """Use only the first N validation and N test examples."""
    val_fraction: Annotated[float, Range(gt=0, lt=0.5)] = 0.1
    """Share of the data held out for validation when the dataset has no validation split."""
    test_fraction: Annotated[float, Range(gt=0, lt=0.5)] = 0.1
    """Share of the data held out for test when the dataset has no test split."""
    split_seed: int = 0
    """Seed of the stratified split; fixed so test data never moves into training."""
    template: str | None = None
    """task=causal-lm: the prompt each example becomes; {text} is filled in and the label word
    is the answer the model learns to continue with. Unset: built from the data, the text
    column's name as the text's cue and the label column's with the label names as the answer
    cue ("Text: {text}\nCategory (business, sport, tech):"; the built-in reviews: "Review:
    {text}\nSentiment:"); the run and `tunelab plan` print the one they use."""
    label_words: list[str] | None = None
    """task=causal-lm: one word per label, in label order (unset = the label names)."""
    response_column: str | None = None
    """task=causal-lm on instruction / free-text data: the column the model learns to write
    (set it to switch from labelled data to instruction data; loss on the response only)."""
    prompt_column: str | None = None
    """Instruction data: the column with the prompt (guessed: prompt, instruction; none = the
    response is free text to model on its own)."""


@dataclass
class ModelConfig:
    name: str = "minilm"
    """Built-in name (minilm), a Hugging Face model id or a local folder."""
    trust_remote_code: bool = False
    """Run Python code shipped with the model repository (some Hub models need it). Off: only
    transformers' own code runs."""
    allow_pickle: bool = False
    """Load weights from pickle files (pytorch_model.bin) when a model has no safetensors.
    Unpickling can run arbitrary code: only for sources you trust."""
    base_dtype: Literal["auto", "fp32", "bf16"] = "auto"
    """How frozen linear-layer weights are stored: bf16 halves their memory and spares bf16
    autocast a copy of each per step, with the same matmul results (autocast rounds them to
    bf16 anyway); embeddings, norms and trained weights stay fp32. auto: bf16 where the run
    computes in bf16 (train.mixed_precision) and the method freezes the base, else fp32."""
    quantize: Literal["none", "4bit"] = "none"
    """4bit: QLoRA's base (arXiv:2305.14314), the frozen linear layers in 4-bit NF4 through
    bitsandbytes (pip install 'tunelab[qlora]'), for adapter methods; CUDA, or a CPU with
    bitsandbytes >= 0.48."""


@dataclass
class TrainConfig:
    lr: Annotated[float | None, Positive] = None
    """Peak learning rate, the one key that sets it (methods have no lr knob); unset = the
    method's own default (`tunelab methods` lists them)."""
    epochs: Annotated[float, Positive] = 1.0
    """Passes over the training data (fractions allowed)."""
    max_steps: Annotated[int | None, Positive] = None
    """Stop after this many optimizer steps (overrides epochs)."""
    batch_size: Annotated[int, Positive] = 32
    """Examples per optimizer step (per device, before accumulation)."""
    grad_accum: Annotated[int, Positive] = 1
    """Micro-batches accumulated per optimizer step."""
    eval_batch_size: Annotated[int, Positive] = 64
    """Examples per evaluation batch (sorted by length; 64 pads 6% on Rotten Tomatoes where
    256 pads 24%, and evaluates 1.3x faster on CPU)."""
    weight_decay: Annotated[float, NonNegative] = 0.01
    """AdamW weight decay (never applied to biases and norm weights)."""
    warmup: Annotated[float, Range(ge=0, lt=1)] = 0.06
    """Warmup length as a fraction of all optimizer steps."""
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    """Learning-rate decay after warmup."""
    grad_clip: Annotated[float, NonNegative] = 1.0
    """Clip the global gradient norm to this value (0 = off)."""
    eval_every: Annotated[int, NonNegative] = 0
    """Validate every N optimizer steps (0 = evals_per_epoch times per epoch)."""
    evals_per_epoch: Annotated[int, Positive] = 1
    """Validate this many times per epoch when eval_every is 0."""
    patience: Annotated[int, NonNegative] = 0
    """Stop after this many validations without improvement (0 = never stop early; with
    until=converged, 0 means 3)."""
    until: Literal["budget", "converged"] = "budget"
    """budget: train the epochs (or max_steps) set; converged: train each run until its
    validation metric stops improving for `patience` validations (3 when unset), with epochs /
    max_steps as the cap, and keep the best checkpoint: each method at its own convergence,
    the budget it took in its record (e.g. train.until=converged train.epochs=10)."""
    trend_points: Annotated[int, NonNegative] = 8
    """At least this many points on each run's learning curve: between the full validations,
    the run also scores a fixed probe subset (probe_examples), so a short run still shows
    whether it was still learning, had converged or overfitted (the report's diagnosis);
    0 = only the full validations."""
    probe_examples: Annotated[int, Positive] = 256
    """Size of that probe subset: the first N validation examples, the same at every point
    (scored at the full validations too, so the curve compares like with like)."""
    metric: Literal["accuracy", "macro_f1", "loss"] = "accuracy"
    """Validation metric that selects the best checkpoint (loss: the lowest; instruction data
    always selects by loss)."""
    seed: int = 0
    """Seed for initialisation, dropout and batch order."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """auto (bf16 autocast where the hardware computes bf16 natively: a recent GPU, or a CPU
    with AMX or AVX512-BF16; fp16 on a GPU without bf16 such as a T4 or V100; fp32 on other
    CPUs), no (fp32), bf16 autocast, or fp16 autocast with loss scaling (CUDA only)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the run trains: auto (a CUDA GPU when torch sees one, else the CPU), cpu (even on
    a GPU machine), or cuda."""
    log_every: Annotated[int, Positive] = 20
    """Read the loss and log every N optimizer steps (the loss is not synced in between)."""
    save_model: bool = True
    """Save the adapter / model and the tokenizer in the run folder."""
    save_every_steps: Annotated[int | None, Positive] = None
    """Also write the resumable checkpoint every N optimizer steps (it is always written at
    each validation); unset = by time only."""
    save_every_minutes: Annotated[float | None, Positive] = 10.0
    """Also write the resumable checkpoint when this many minutes passed since the last one
    (unset = only at validations and save_every_steps)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward instead of keeping them: less memory for a longer
    step (for large models or long texts)."""
    fsdp: bool = False
    """Under several processes (torchrun, accelerate launch), shard weights, gradients and
    optimizer state across them (FSDP) instead of a full copy in each (DDP); also on when
    accelerate's config says FSDP. Full fine-tuning and adapters on linear layers."""
    test: bool = True
    """Score the best validation checkpoint on the test split at the end (tuning trials do
    not: the test split never takes part in choosing)."""
    fast_cpu: bool = True
    """On CPU: fast dropout masks and a non-trimming allocator (same math, see tunelab.fast);
    false = torch's own dropout, bit-for-bit."""
    compile: Literal["off", "model", "blocks"] = "off"
    """torch.compile the model for training: model (its whole forward), blocks (each
    transformer block, compiled once for all layers: a shorter compile) or off. Off by
    default: slower on the CPUs measured (bench/RESULTS.md, levers)."""

    @property
    def stop_patience(self) -> int:
        """Validations without improvement that stop a run (0: it runs its whole budget)."""
        return self.patience or (3 if self.until == "converged" else 0)


@dataclass
class TuneConfig:
    trials: Annotated[int, Positive] = 6
    """Configurations per method, the same for every method (with the same per-trial step
    budget: that is what makes a tuned comparison fair). With the halving pruner, the size of
    each method's bracket: 6 costs about 1.8 full runs per method (see tune.pruner)."""
    evals: Annotated[int, Positive] = 9
    """Validation points of a trial that runs to the end; the pruner decides at them."""
    pruner: Literal["halving", "hyperband", "median", "none"] = "halving"
    """How weak configurations stop early. halving: successive halving across methods, rung by
    rung (every trial to the first rung, the best 1/eta on to the next from where they paused,
    ...; rungs at validations evals/eta^k: 1, 3, 9 of 9); hyperband, median: Optuna's pruners
    on trials sampled one at a time (TPE); none: every trial to the end."""
    eta: Annotated[int, Range(ge=2)] = 3
    """Halving: the reduction factor, the ratio between rungs (1/eta of the trials climb)."""
    race: bool = True
    """Race the methods: a method whose best validation accuracy is behind the leader's outside
    noise (95% Wilson intervals over the tuning subset) stops receiving budget; with halving
    after each rung but the last, with the Optuna pruners (trials round-robin, one per method
    per round) once every method finished its random start-up (max(4, trials/3) trials). The
    report says where and why it stopped."""
    eval_examples: Annotated[int | None, Positive] = 500
    """Validation examples scored during tuning: the first N of the validation split, the same
    fixed subset for every trial (unset = all). The final comparison scores all of them."""
    seed: int = 0
    """Seed of the sampler (halving: the scrambled Sobol sequence, the same for every method;
    the Optuna pruners: TPE)."""
    space: dict[str, Any] = field(default_factory=dict)
    """Per-method changes to the search space, e.g. {lora: {lr: [1e-4, 1e-2], r: 8}}: a
    [low, high] range, a list of three or more choices, or one value that fixes the knob."""
    shared: list[str] = field(default_factory=list)
    """Shared knobs to search for every method too: batch_size, epochs, warmup, weight_decay."""
    storage: str = ""
    """Optuna storage: empty = the journal file OUT/tune.journal (an interrupted tune resumes;
    processes on one machine share it); or an RDB URL (postgresql://..., mysql://...) shared
    by workers on many machines."""


@dataclass
class RunConfig:
    name: str = ""
    """Run name; default <method>-seed<seed> (<method>-<task>-seed<seed> for causal-lm)."""
    out_dir: str = "runs"
    """Folder that holds run folders."""
    tracker: str = "tensorboard"
    """accelerate tracker for metrics: tensorboard, wandb, mlflow, ... or none."""
    task: str = "classification"
    """What the model learns, a task of tunelab.tasks (checked before anything loads):
    classification (a head on the text) or causal-lm (the model's own LM head continues
    data.template with the label word; scored by label-word log-likelihood, the way
    lm-eval-harness scores multiple choice)."""
    method: Method = field(default_factory=lambda: build_method({}))
    """Fine-tuning method and its knobs, e.g. {name: lora, r: 16} (see `tunelab methods`);
    built and checked when the config is read. The learning rate is train.lr."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    forgetting: ForgettingConfig = field(default_factory=ForgettingConfig)

    @property
    def method_name(self) -> str:
        return self.method.name


def _merge_method(current: Method, value: Any) -> Method:
    """``method: lora`` or ``{name: lora, r: 16}`` over the current method, built and checked.
    Naming another method starts from that method's defaults (the old method's knobs would
    not fit it)."""
    if isinstance(value, Method):
        return value
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(f"method must be a name or a mapping, got {value!r}")
    name = str(value.get("name", current.name))
    base = knobs(current) if name == current.name else {}
    return build_method({**base, **value, "name": name})


SPECIAL = {"method": _merge_method}  # naming another method starts from its defaults


# ---------------------------------------------------------------- YAML and overrides


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. (PyYAML follows YAML 1.1, where yes/no/on/off are
    booleans too, so `mixed_precision: no` or `name: off` would lose their words.)"""


_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), "tTfF")


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ``["train.lr=3e-4", "method=lora", "method.r=16"]`` into a nested dict (values
    parsed as YAML). ``method=NAME`` means ``method.name=NAME``, so it composes with knobs."""
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. train.lr=3e-4")
        key, raw = item.split("=", 1)
        key = "method.name" if key.strip() == "method" else key.strip()
        try:
            value = yaml_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier one")
        node[parts[-1]] = value
    return nested


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, **sections: dict[str, Any]
) -> RunConfig:
    """Build a validated RunConfig from defaults, an optional YAML file, dicts and overrides."""
    cfg = RunConfig()
    if path is not None:
        apply_fields(cfg, "", _read_yaml(Path(path)), SPECIAL)
    if sections:
        apply_fields(cfg, "", {k: v for k, v in sections.items() if v is not None}, SPECIAL)
    apply_fields(cfg, "", parse_overrides(overrides or []), SPECIAL)
    check_run_name(cfg.name)
    return cfg


def config_from_dict(d: dict[str, Any]) -> RunConfig:
    """A config as ``to_dict`` / ``public_dict`` wrote it, read back and checked (a run
    record's): keys this tunelab does not know (a record from another version) are left
    out."""
    cfg = RunConfig()
    apply_fields(cfg, "", _known(cfg, d), SPECIAL)
    return cfg


def _known(obj: Any, d: dict[str, Any]) -> dict[str, Any]:
    if isinstance(obj, Method):  # the knobs of the method named, if this tunelab has it
        name = d.get("name", obj.name)
        names = {f.name for f in dataclasses.fields(METHODS[name])} if name in METHODS else ()
        return {"name": name, **{k: v for k, v in d.items() if k in names}}
    fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return {
        k: _known(fields[k], v) if dataclasses.is_dataclass(fields[k]) and isinstance(v, dict)
        else v
        for k, v in d.items()
        if k in fields
    }  # fmt: skip


def check_run_name(name: str) -> None:
    """A run name is one plain folder name inside --out: no separator, no ``..``, not
    absolute, not hidden (tunelab's own temporary and claim files start with a dot)."""
    bad = (
        "/" in name or "\\" in name or name.startswith(".") or os.path.isabs(name)
        or any(ord(c) < 32 for c in name) or len(name) > 200
    )  # fmt: skip
    if bad:
        raise ConfigError(
            f"name must be a plain folder name (letters, digits, -, _, no '/', '\\' or "
            f"leading '.'), got {name!r}: a run is written only inside --out"
        )


def for_method(base: RunConfig, method: str, params: dict[str, Any] | None = None, **top: Any):
    """``base`` for another method (its knobs at their defaults unless base already runs that
    method), with dotted ``params`` (e.g. {"train.lr": 3e-4, "method.r": 16}) and top-level
    fields (name, out_dir) set: a copy, checked by the same rules as a config file."""
    cfg = copy.deepcopy(base)
    cfg.name = ""
    if cfg.method.name != method:
        cfg.method = build_method({"name": method})
    apply_fields(cfg, "", {**nest(params or {}), **top}, SPECIAL)
    check_run_name(cfg.name)
    return cfg


def nest(dotted: dict[str, Any]) -> dict[str, Any]:
    """{"train.lr": 1e-3, "method.r": 8} -> {"train": {"lr": 1e-3}, "method": {"r": 8}}."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *parts, last = key.split(".")
        node = out
        for part in parts:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def _read_yaml(p: Path) -> dict[str, Any]:
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level")
    return data


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain nested dict of the config, secrets included (in memory only: files get
    ``public_dict``); the method as {name, knob: value, ...}."""
    return {**dataclasses.asdict(cfg), "method": method_dict(cfg.method)}


def public_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config as files, logs, trackers and reports show it: secrets redacted."""
    return redact(to_dict(cfg))


# a key that names a secret as a whole word: token, hf_token, api_key, db_password... (never a
# count such as num_virtual_tokens or max_new_tokens)
SECRET_KEY = re.compile(r"(^|[_-])(pass(word|wd)?|secret|token|api_?key|credentials?)$", re.I)
URL_PASSWORD = re.compile(r"(?P<head>[a-z][\w+.-]*://[^:/@\s]*:)[^@\s]*(?P<at>@)", re.I)
QUERY_SECRET = re.compile(r"(?P<key>[?&;](pass(word|wd)?|secret|token|api_?key)=)[^&;\s]*", re.I)


def redact(value: Any) -> Any:
    """``value`` with secrets replaced by ``***``: a URL's password (postgresql://user:***@host)
    and query secrets (?password=***), and every value under a key named like a password,
    secret, token or API key."""
    if isinstance(value, dict):
        return {
            k: "***" if SECRET_KEY.search(str(k)) and value[k] else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str):
        value = URL_PASSWORD.sub(r"\g<head>***\g<at>", value)
        return QUERY_SECRET.sub(r"\g<key>***", value)
    return value


# ---------------------------------------------------------------- documentation


def describe(key: str) -> str:
    """The docstring of a dotted config key such as ``train.lr`` (for CLI help)."""
    cls: type = RunConfig
    *sections, name = key.split(".")
    for section in sections:
        cls = type(getattr(cls(), section))
    return field_docs(cls).get(name, "")


SECTIONS = {
    "": RunConfig,
    "data.": DataConfig,
    "model.": ModelConfig,
    "train.": TrainConfig,
    "tune.": TuneConfig,
    "forgetting.": ForgettingConfig,
}
