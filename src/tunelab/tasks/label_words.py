"""Label-word scoring with a bounded memory: what a decoder says each label word's probability
is after each prompt, the way lm-eval-harness scores multiple choice, without ever holding
logits over the whole vocabulary at every position.

Each prompt runs once, without its last token, keeping the key/value cache and computing no
logits. Prompts are left-padded there, so every row's last token sits at the same cache slot
and the word tokens follow it directly: a sliding-window layer (Gemma 2 and 3, gpt-oss,
Mistral) measures its window in cache slots, and right padding between a short prompt and its
word would push real tokens out of the window (and out of a sliding cache). Then, per label
word, one short forward of ``[last prompt token, word tokens but the last]`` on a copy of
that cache gives the next-token logits exactly where the word's tokens are scored, and
log-probabilities are taken there only (the token's logit minus a logsumexp over the
vocabulary). Memory: the cache (and one copy) plus ``rows x word length
x vocabulary`` logits, instead of ``rows x prompt length x vocabulary`` per word. Rows are
processed in chunks whose cache fits ``CACHE_BYTES``.

A peft prompt-learning model (prompt tuning, P-tuning) prepends its virtual tokens to the
prompt's forward here, as its own forward does, and the word steps run on the base model.
"""

from __future__ import annotations

import copy

import torch

from tunelab.anatomy import unwrap
from tunelab.errors import ConfigError

CACHE_BYTES = 512 * 2**20  # key/value cache per chunk of rows (its copy for a word doubles it)


@torch.no_grad()
def word_logprobs(
    model, ids: torch.Tensor, starts: torch.Tensor, words: list[list[int]]
) -> list[torch.Tensor]:
    """Per label word, ``[rows, word length]`` log-probabilities of its tokens after each
    prompt (``ids[i, :starts[i]]``); rows in chunks that keep the cache under CACHE_BYTES."""
    width = int(starts.max())
    rows = max(1, int(CACHE_BYTES // max(1, width * cache_bytes_per_token(model))))
    parts = [
        _chunk(model, ids[i : i + rows, :width], starts[i : i + rows], words)
        for i in range(0, len(ids), rows)
    ]
    return [torch.cat([p[k] for p in parts]) for k in range(len(words))]


def _chunk(model, ids: torch.Tensor, starts: torch.Tensor, words: list[list[int]]):
    lm, virtual = _language_model(model, len(ids))
    n, prefix = len(ids), ids[:, : int(starts.max()) - 1]  # every prompt but its last token
    keep = torch.arange(prefix.shape[1], device=ids.device)[None, :] < (starts - 1)[:, None]
    mask = torch.cat([torch.ones(n, virtual.shape[1], dtype=torch.long, device=ids.device),
                      keep.long()], dim=1)  # fmt: skip
    shift = prefix.shape[1] - (starts - 1)  # each row's padding, moved to its left
    mask, few = _left(mask, shift), _few_logits(lm)
    where = {"attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
    cache = None
    if virtual.shape[1]:  # as peft's own forward does: virtual tokens, then the prompt
        embeds = torch.cat([virtual, lm.get_input_embeddings()(prefix).to(virtual.dtype)], 1)
        cache = lm(inputs_embeds=_left(embeds, shift), use_cache=True, **where, **few)
    elif prefix.shape[1]:
        cache = lm(input_ids=_left(prefix, shift), use_cache=True, **where, **few)
    cache = cache.past_key_values if cache is not None else None
    last = ids[torch.arange(n, device=ids.device), starts - 1]
    result = []
    for k, word in enumerate(words):
        steps = torch.tensor(word[:-1], device=ids.device, dtype=ids.dtype).expand(n, -1)
        x = torch.cat([last[:, None], steps], dim=1)
        pos = (virtual.shape[1] + starts - 1)[:, None] + torch.arange(len(word), device=ids.device)
        full = torch.cat([mask, torch.ones_like(x)], dim=1)
        past = cache if cache is None or k == len(words) - 1 else copy.deepcopy(cache)
        logits = lm(
            input_ids=x, attention_mask=full, position_ids=pos, past_key_values=past,
            use_cache=True,
        ).logits.float()  # fmt: skip
        target = torch.tensor(word, device=ids.device)
        picked = logits.gather(-1, target.expand(n, -1)[..., None])[..., 0]
        result.append(picked - logits.logsumexp(-1))
    return result


def _left(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Each row of ``x`` ([rows, length, ...], its padding at the right end) rotated right by
    its ``shift``: the padding moved to the left, the real part ending at the last slot."""
    width = x.shape[1]
    index = (torch.arange(width, device=x.device)[None, :] - shift[:, None]) % width
    index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return x.gather(1, index)


def _language_model(model, rows: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """(the module to call, the virtual-token embeddings to prepend: ``[rows, P, dim]``, P = 0
    for every model but a peft prompt-learning one)."""
    cfg = getattr(model, "active_peft_config", None)
    if cfg is not None and cfg.is_prompt_learning:
        if cfg.peft_type.value not in ("PROMPT_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING"):
            raise ConfigError(f"label-word scoring does not support peft {cfg.peft_type.value}")
        return model.get_base_model(), model.get_prompt(batch_size=rows)
    weight = model.get_input_embeddings().weight
    return model, weight.new_zeros(rows, 0, weight.shape[-1])


def _few_logits(lm) -> dict:
    """Ask for the last position's logits only (the prompt's own logits are never used), on
    models whose forward takes ``logits_to_keep`` (all recent decoders)."""
    import inspect

    base = unwrap(lm)
    takes = "logits_to_keep" in inspect.signature(base.forward).parameters
    return {"logits_to_keep": 1} if takes else {}


def cache_bytes_per_token(model) -> int:
    """Bytes of key/value cache one token takes in ``model`` (its weights' element size)."""
    return kv_bytes_per_token(model.config, model.get_input_embeddings().weight.element_size())


def kv_bytes_per_token(config, element_size: int = 4) -> int:
    """2 x layers x key/value heads x head width x element size, from a model config (the
    hidden width when it names no heads)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", 1)
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "n_head", 1)
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", 1)
    kv = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // max(1, heads)
    return 2 * layers * kv * head_dim * element_size
