"""What the parts of a transformer are, found from the model itself rather than from tables
of names: the stack of blocks (and whether its weights are shared, as in ALBERT), each block's
attention projections (query / key / value, fused qkv, output) and MLP projections (in, out),
the input embedding's width, and the task head trained from scratch.

Methods ask this module which modules to adapt (LoRA, IA3), which layers to freeze or decay
(freeze, llrd) and which head to train; measure asks it for the FLOP count's depths. Every
family transformers ships names these differently (BERT ``query``, DistilBERT ``q_lin``,
GPT-2 a Conv1D ``c_attn``, Phi-3 a fused ``qkv_proj``, ModernBERT ``Wqkv``): peft's tables
come first where they know the architecture, roles found from the modules' names and shapes
after that, so a family neither table knows still gets sensible targets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from tunelab.errors import TunelabError

# leaf names of attention projections across families (case-insensitive)
_ROLE_NAMES = {
    "q": r"q|query|q_proj|q_lin|wq|query_proj",
    "k": r"k|key|k_proj|k_lin|wk|key_proj",
    "v": r"v|value|v_proj|v_lin|wv|value_proj",
    "qkv": r"qkv|qkv_proj|c_attn|wqkv|query_key_value|in_proj|qkv_lin|w_pack",
}
_ATTENTION_PART = re.compile(r"attn|attention", re.I)
LAYER_KEYS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers")  # by family


class NotApplicable(TunelabError):
    """A method that cannot apply to this architecture; the message says why and what can."""


def is_linear(module: nn.Module) -> bool:
    """nn.Linear, or transformers' Conv1D (GPT-2's transposed linear)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def features(module: nn.Module) -> tuple[int, int]:
    """(in, out) features of a linear-like module (Conv1D stores its weight transposed)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.weight.shape[0], module.weight.shape[1]


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@dataclass(frozen=True)
class Anatomy:
    """The parts of one model, by module path (see the module docstring)."""

    model_type: str
    stack: str
    """Dotted path of the block list ("bert.encoder.layer"); "" if none was found."""
    n_blocks: int
    """Distinct blocks in the stack (their own weights)."""
    n_layers: int
    """Layers the forward applies: more than n_blocks when blocks are shared (ALBERT)."""
    roles: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Role -> block-relative module paths: q, k, v, qkv, attn_out, mlp_in, mlp_out."""
    heads: tuple[str, ...] = ()
    """Top-level modules outside the backbone (the task head, new and trained in full)."""
    embed_dim: int = 0
    """Width of the input embeddings (what a soft prompt must match)."""
    n_heads: int = 0
    """Attention heads per layer, from the config (whatever the family calls the key)."""

    @property
    def shared(self) -> bool:
        return self.n_blocks < self.n_layers

    def index(self, name: str) -> int | None:
        """Index of the block a parameter or module path belongs to, or None."""
        if not self.stack:
            return None
        m = re.search(rf"(?:^|\.){re.escape(self.stack)}\.(\d+)(?:\.|$)", name)
        return int(m.group(1)) if m else None

    def depth(self, name: str) -> int:
        """Depth for layer-wise schemes: embeddings (and soft prompts) 0, block i -> i + 1,
        everything above the stack (final norm, pooler, head) n_blocks + 1."""
        i = self.index(name)
        if i is not None:
            return i + 1
        if re.search(r"embed|(?:^|\.)(?:wte|wpe)\.", name):
            return 0
        return self.n_blocks + 1

    def is_head(self, name: str) -> bool:
        """Whether a parameter belongs to the task head."""
        return any(re.search(rf"(?:^|\.){re.escape(h)}\.", name) for h in self.heads)

    def pattern(self, relative: list[str]) -> str:
        """A regex (peft's ``target_modules`` as a string is matched in full) for modules of
        every block whose block-relative path ends with one of ``relative``: confined to the
        stack, so a head or pooler of the same leaf name is never adapted."""
        ends = "|".join(re.escape(r) for r in sorted(set(relative)))
        return rf"(?:.*\.)?{re.escape(self.stack)}\.\d+\.(?:.*\.)?(?:{ends})"

    def require_layers(self, method: str, alternatives: str, verb: str) -> None:
        """Refuse a layer-wise method on a model without distinct layers to tell apart (to
        ``verb``: freeze, decay)."""
        if not self.stack:
            raise NotApplicable(
                f"{method} needs a stack of transformer blocks and none was found in "
                f"{self.model_type}; use {alternatives}"
            )
        if self.shared:
            raise NotApplicable(
                f"{method} on {self.model_type}: its {self.n_layers} layers share "
                f"{self.n_blocks} block(s) of weights (cross-layer sharing), so there are no "
                f"separate lower and upper layers to {verb}"
                f"; use {alternatives}"
            )


def anatomy(model: nn.Module) -> Anatomy:
    """The parts of ``model`` (a transformers model, or a peft model wrapping one)."""
    base = unwrap(model)
    config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else None
    config = config or base.config
    n_config = config_layers(config)
    stack, blocks = find_stack(base, n_config)
    n_layers = max(len(blocks), n_config or 0)
    roles = block_roles(blocks[0]) if blocks else {}
    emb = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    return Anatomy(
        model_type=getattr(base.config, "model_type", type(base).__name__),
        stack=stack,
        n_blocks=len(blocks),
        n_layers=n_layers if blocks else 0,
        roles=roles,
        heads=head_modules(base),
        embed_dim=int(emb.weight.shape[1]) if emb is not None else 0,
        n_heads=_config_int(config, "num_attention_heads", "n_head", "n_heads", "num_heads") or 0,
    )


def _config_int(config, *keys: str) -> int | None:
    """The first of ``keys`` the config sets to an int (families name the same thing
    differently: BERT num_hidden_layers, GPT-2 n_layer, DistilBERT n_layers)."""
    for key in keys:
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return None


def find_stack(model: nn.Module, n_config: int | None) -> tuple[str, list[nn.Module]]:
    """The block list: an outermost ModuleList of same-class modules holding parameters; the
    one as long as the config's layer count first, else the one with the most parameters.
    (Expert lists of mixture-of-experts models sit inside blocks, so they are never it.)"""
    found: list[tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or not len(module):
            continue
        if any(name.startswith(f"{outer}.") for outer, _ in found):
            continue  # nested in a stack already found
        kinds = {type(m) for m in module}
        if len(kinds) == 1 and any(True for _ in module.parameters()):
            found.append((name, module))
    if not found:
        return "", []

    def size(item: tuple[str, nn.ModuleList]) -> tuple[bool, int]:
        _, ml = item
        return len(ml) == n_config, sum(p.numel() for p in ml.parameters())

    name, blocks = max(found, key=size)
    return name, list(blocks)


def block_roles(block: nn.Module) -> dict[str, tuple[str, ...]]:
    """Role -> block-relative paths of the block's linear layers: attention projections by
    name (q, k, v, fused qkv; the rest attn_out), MLP projections by shape (mlp_out narrows
    back to the model width, mlp_in widens)."""
    roles: dict[str, list[str]] = {r: [] for r in (*_ROLE_NAMES, "attn_out", "mlp_in", "mlp_out")}
    for path, module in block.named_modules():
        if not path or not is_linear(module) or is_router(path, module):
            continue
        leaf = path.rsplit(".", 1)[-1]
        if _ATTENTION_PART.search(path):
            role = next(
                (r for r, names in _ROLE_NAMES.items() if re.fullmatch(names, leaf, re.I)),
                "attn_out",
            )
        else:
            n_in, n_out = features(module)
            role = "mlp_out" if n_in > n_out else "mlp_in"
        roles[role].append(path)
    return {r: tuple(paths) for r, paths in roles.items() if paths}


def is_router(path: str, module: nn.Module) -> bool:
    """A mixture of experts' router (a linear layer from the model width to a score per
    expert, in some families a Linear subclass): no role, so no adapter reaches it."""
    if "Router" in type(module).__name__:
        return True
    n_in, n_out = features(module)
    return path.rsplit(".", 1)[-1] in ("gate", "router") and n_out * 4 <= n_in


def head_modules(model: nn.Module) -> tuple[str, ...]:
    """Top-level children with parameters other than the backbone: the task head (BERT's
    ``classifier``, DistilBERT's ``pre_classifier`` + ``classifier``, DeBERTa's ``pooler``,
    ModernBERT's ``head``, GPT-2's ``score``), and the backbone's modules the checkpoint did
    not hold (``models.fresh_modules``: BERT's pooler from a masked-LM checkpoint). A
    language model's output layer is pretrained, not a new head: it is left out."""
    backbone = getattr(model, "base_model_prefix", "")
    out = getattr(model, "get_output_embeddings", lambda: None)()
    names = list(getattr(model, "fresh_modules", ()))
    for name, child in model.named_children():
        if name == backbone or child is out or not any(True for _ in child.parameters()):
            continue
        names.append(name)
    return tuple(names)


def config_layers(config) -> int | None:
    """Layers a model config's forward applies (None if it names no count)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return _config_int(text, *LAYER_KEYS)


def with_layers(config, n: int):
    """A copy of a model config with ``n`` layers (per-layer lists such as ``layer_types``
    cut to match), for a shallow copy of the architecture."""
    import copy

    config = copy.deepcopy(config)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    key = next((k for k in LAYER_KEYS if isinstance(getattr(text, k, None), int)), None)
    if key is None:
        raise TunelabError(f"{config.model_type}: the config names no layer count")
    setattr(text, key, min(n, getattr(text, key)))
    for name in ("layer_types",):
        if isinstance(getattr(text, name, None), list):
            setattr(text, name, getattr(text, name)[:n])
    return config


# ------------------------------------------------------------------ mixture of experts

EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
PER_TOKEN_KEYS = ("num_experts_per_tok", "experts_per_token", "moe_top_k")


@dataclass(frozen=True)
class Experts:
    """A mixture-of-experts model's routed experts: ``n`` per MoE layer, ``per_token`` run for
    each token, their parameters (every MoE layer's, ids of the tensors) and the routers'
    module paths. Shared experts (DeepSeek's) run for every token: they are not routed."""

    n: int
    per_token: int
    params: frozenset[int]
    routers: tuple[str, ...]
    weights: tuple[str, ...]
    """Block-relative names of the fused expert weights (3-D: expert x out x in), what peft's
    ``target_parameters`` adapts."""

    @property
    def active_fraction(self) -> float:
        return self.per_token / self.n


def experts(model: nn.Module) -> Experts | None:
    """The routed experts of ``model`` (a peft wrapper too), None for a dense model: modules
    transformers names ``*Experts`` (fused, one 3-D weight per projection) or ``experts``
    lists of expert MLPs, sized by the config's expert count and experts per token."""
    base = unwrap(model)
    text = base.config.get_text_config() if hasattr(base.config, "get_text_config") else None
    text = text or base.config
    n, k = _config_int(text, *EXPERT_KEYS), _config_int(text, *PER_TOKEN_KEYS)
    if not n or not k:
        return None
    found = [(name, m) for name, m in base.named_modules()
             if (type(m).__name__.endswith("Experts") and "Shared" not in type(m).__name__)
             or (name.endswith(".experts") and isinstance(m, nn.ModuleList))]  # fmt: skip
    if not found:
        return None
    params = frozenset(id(p) for _, m in found for p in m.parameters())
    routers = tuple(
        name for name, m in base.named_modules()
        if "Router" in type(m).__name__ or (is_linear(m) and is_router(name, m))
    )  # fmt: skip
    a = anatomy(base)
    weights = sorted({_relative(a, f"{name}.{pn}") for name, m in found
                      for pn, p in m.named_parameters(recurse=False) if p.ndim == 3})  # fmt: skip
    return Experts(n, k, params, routers, tuple(w for w in weights if w))


def _relative(a: Anatomy, name: str) -> str:
    """A parameter's path inside its block ("" outside the stack)."""
    m = re.search(rf"(?:^|\.){re.escape(a.stack)}\.\d+\.(.+)$", name) if a.stack else None
    return m.group(1) if m else ""
