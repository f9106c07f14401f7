"""What every method shares: the two hooks, the head, and AdamW parameter groups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from tunelab.anatomy import Anatomy, NotApplicable, anatomy, experts
from tunelab.models import is_causal_lm


def no_decay(name: str, p: nn.Parameter) -> bool:
    """Biases and norm weights (1-D tensors) get no weight decay: decaying them only pulls
    shift/scale parameters towards zero without regularising the function (cf. nanoGPT)."""
    return p.ndim < 2


def adamw_groups(
    named: list[tuple[str, nn.Parameter]], lr: float, weight_decay: float, **extra: Any
) -> list[dict]:
    """Split parameters into a decayed and an undecayed group at one learning rate."""
    decay = [p for n, p in named if p.requires_grad and not no_decay(n, p)]
    plain = [p for n, p in named if p.requires_grad and no_decay(n, p)]
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay, **extra},
        {"params": plain, "lr": lr, "weight_decay": 0.0, **extra},
    ]
    return [g for g in groups if g["params"]]


def peft_task(model: nn.Module):
    """peft's task type for the model: CAUSAL_LM for a language-model head, else SEQ_CLS."""
    from peft import TaskType

    return TaskType.CAUSAL_LM if is_causal_lm(model) else TaskType.SEQ_CLS


def peft_head(model: nn.Module, a: Anatomy) -> dict[str, Any]:
    """peft keywords that train the task head in full (``modules_to_save``): every module of
    it, found from the model (peft alone knows only ``classifier`` and ``score``, and would
    leave DistilBERT's ``pre_classifier`` or DeBERTa's fresh ``pooler`` frozen)."""
    return {} if is_causal_lm(model) or not a.heads else {"modules_to_save": list(a.heads)}


def stack_targets(
    a: Anatomy, table: dict[str, list[str]], roles: list[tuple[str, ...]], method: str
) -> list[str]:
    """Block-relative paths of the modules an adapter goes into: the ones peft's ``table``
    names for this architecture when they exist in its blocks, else those of the first group
    of ``roles`` the blocks have (e.g. query+value, else a fused qkv)."""
    every = [p for paths in a.roles.values() for p in paths]
    names = table.get(a.model_type) or []
    hit = [p for p in every if any(p == n or p.endswith("." + n) for n in names)]
    for group in roles:
        if hit:
            break
        hit = [p for r in group for p in a.roles.get(r, ())]
    if not hit:
        raise NotApplicable(
            f"{method} on {a.model_type}: no linear layers of the kinds it adapts "
            f"({', '.join('+'.join(g) for g in roles)}) were found in its blocks; use full, "
            f"bitfit or prompt"
        )
    return hit


DEFAULT_ROLES = [("q", "v"), ("qkv",), ("q", "k", "v", "attn_out")]
ALL_LINEAR = [("q", "k", "v", "qkv", "attn_out", "mlp_in", "mlp_out")]


def adapter_targets(model: nn.Module, table: dict, chosen: list[str] | None, method: str):
    """peft's ``target_modules`` for an adapter on linear layers of the blocks: unset = peft's
    ``table`` for the architecture, else query/value found by name, else a fused qkv;
    ``[all-linear]`` = every linear layer of the blocks; else the user's names, refused where
    they reach into the task head (which trains in full)."""
    from tunelab.errors import ConfigError

    a = anatomy(model)
    if not chosen or chosen == ["all-linear"]:
        roles = ALL_LINEAR if chosen else DEFAULT_ROLES
        hit = stack_targets(a, {} if chosen else table, roles, method)
        moe = experts(model)  # a router stays frozen unless named
        routers = (
            {r.rsplit(f"{a.stack}.", 1)[-1].split(".", 1)[-1] for r in moe.routers}
            if moe
            else set()
        )
        return a.pattern([p for p in hit if p not in routers])
    clash = [n for n, _ in model.named_modules() if a.is_head(n + ".") and
             any(n == t or n.endswith("." + t) for t in chosen)]  # fmt: skip
    if clash:
        raise ConfigError(
            f"method.target_modules matches {clash[0]!r}, part of the task head, which trains "
            f"in full; name modules inside the transformer blocks"
        )
    return chosen


def expert_targets(model: nn.Module, chosen: list[str] | None, method: str, dropout: float):
    """peft's ``target_parameters`` for LoRA on a mixture of experts' fused expert weights:
    ``[experts]`` = every routed expert weight the model has (``anatomy.experts``), else the
    user's names; {} when unset. Refused on a model without fused experts, and with dropout
    (peft applies none to a parameter it adapts)."""
    from tunelab.errors import ConfigError

    if not chosen:
        return {}
    moe = experts(model)
    if not moe or not moe.weights:
        raise NotApplicable(
            f"method.target_parameters on {anatomy(model).model_type}: it has no fused routed "
            f"expert weights to adapt; leave it unset"
        )
    if dropout:
        raise ConfigError(
            f"method.target_parameters: peft's LoRA on expert weights has no dropout; set "
            f"method.dropout=0 (got {dropout:g}) ({method})"
        )
    return {"target_parameters": list(moe.weights) if chosen == ["experts"] else chosen}


def peft_adapter(model: nn.Module, config_class, **knobs: Any) -> nn.Module:
    """``get_peft_model`` with the task type and the head trained in full (``peft_head``)
    filled in; a peft refusal (a layer shape the tuner cannot take) becomes NotApplicable."""
    import warnings

    from peft import get_peft_model

    a = anatomy(model)
    try:
        cfg = config_class(task_type=peft_task(model), **peft_head(model, a), **knobs)
        with warnings.catch_warnings():  # peft reads an attribute transformers 5 deprecated
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
            return get_peft_model(model, cfg)
    except (ValueError, TypeError, NotImplementedError) as e:
        name = config_class.__name__.removesuffix("Config").lower()  # the method's name
        raise NotApplicable(f"{name} on {a.model_type}: peft refuses it: {e}") from None


def set_trainable(model: nn.Module, keep) -> None:
    """requires_grad = keep(name) for every parameter."""
    for n, p in model.named_parameters():
        p.requires_grad_(bool(keep(n)))


@dataclass
class Method:
    """Base of a fine-tuning method: two hooks, both with sensible defaults.

    Subclasses are dataclasses whose fields are the method's knobs, typed (``Literal`` for
    choices, ``Annotated[..., Range]`` for bounds) and documented by the docstring under each;
    ``build_method`` checks them before anything is loaded. ``note`` (optional) tells
    `tunelab methods` users what to know before choosing the method.
    """

    name = "method"
    description = ""
    note = ""
    # Search space for `tunelab tune`, as data: knob -> ("log", low, high) | ("float", low,
    # high) | ("int", low, high) | ("choice", [values]). The lr is always searched
    # log-uniformly from lr/10 to lr*10 unless a method says otherwise here.
    space: ClassVar[dict[str, tuple]] = {}
    saves_adapter: ClassVar[bool] = False
    """True when the run saves a peft adapter (small) instead of the whole model."""
    title: ClassVar[str] = ""
    """How reports name the method in a sentence (default: its name)."""
    trains_every_weight: ClassVar[bool] = False
    """Every weight trains: `plan` suggests such a method first when it fits (the reference
    the parameter-efficient methods approximate)."""
    reference: ClassVar[bool] = False
    """The method the report's verdicts and the size study measure the others against."""
    efficient_default: ClassVar[bool] = False
    """The parameter-efficient method `plan` suggests when no full method fits."""
    plan_knobs: ClassVar[dict[str, Any]] = {}
    """Knobs `plan` sets on the fake model (same cost, nothing loaded)."""
    article: ClassVar[tuple[str, str, str] | None] = None
    """The seed article's row for the method: (compute cost, efficacy, where it fits); the
    report's size study tests it against measurements."""
    lr: ClassVar[float] = 5e-5
    """This method's default peak learning rate: the one key that sets a run's rate is
    train.lr, and unset it is this (`tunelab methods` lists them)."""

    def prepare(self, model: nn.Module) -> nn.Module:
        """Freeze / inject / wrap the model; return the model to train."""
        return model

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
        """AdamW parameter groups of the trainable parameters."""
        return adamw_groups(list(model.named_parameters()), lr, weight_decay)

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """Called by the loop after every optimizer step (``step`` counts from 0 of
        ``total_steps``), before the gradients are cleared: a method that changes its own
        structure while it trains (AdaLoRA's rank budget) does it here. Default: nothing."""
