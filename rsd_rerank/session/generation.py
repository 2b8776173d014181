"""Free greedy generation from the chat prompts (RankZephyr-style), not constrained to identifiers:
what a RankLLM user's listwise reranker does, timed beside the constrained methods.

It runs its own prefill of the prompts (without the ranking's forced ``head``), as a RankLLM user's
would, then one forward a token, all through the session's ``Forward`` (uncounted: these are not
verification passes). Plain argmax, as RankLLM's vLLM path asks (temperature 0): no repetition
penalty or other processor from the model's generation config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rsd_rerank.prompt import Prompt
from rsd_rerank.session.forward import Forward

__all__ = ["Generation", "generate"]


@dataclass(frozen=True)
class Generation:
    """Free greedy generation from the chat prompt (RankZephyr-style), not constrained to identifiers."""

    text: str
    """The generated text, special tokens dropped."""
    new_tokens: int
    """Tokens generated (each one a decode step after generation's own prefill)."""
    seconds: float
    """End to end, generation's own prefill of the prompt included (for a batch: the whole batch's)."""


@torch.inference_mode()
def generate(
    forward: Forward,
    tokenizer,
    prompts: Sequence[Prompt],
    pad_id: int,
    max_new_tokens: int,
    min_new_tokens: int = 0,
) -> list[Generation]:
    """Greedy generation for ``prompts`` together (left-padded), each until its EOS or ``max_new_tokens``
    (EOS is barred before ``min_new_tokens``, and with ``min_new_tokens`` every sequence runs the full
    length, for timing)."""
    device = forward.device
    ids = [p.token_ids[: len(p.token_ids) - len(p.layout.head)] for p in prompts]
    width = max(len(i) for i in ids)
    tokens = torch.full((len(ids), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(tokens)
    for b, row in enumerate(ids):
        tokens[b, width - len(row) :] = torch.tensor(row, device=device)
        mask[b, width - len(row) :] = 1
    eos = tokenizer.eos_token_id
    start = forward.clock()
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    kv, new = None, []
    done = torch.zeros(len(ids), dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        logits, cache, _ = forward(tokens, kv, mask, positions, keep=1, queries=None)
        scores = logits[:, -1]
        if eos is not None and step < min_new_tokens:
            scores[:, eos] = float("-inf")
        chosen = scores.argmax(dim=-1).masked_fill(done, pad_id)  # finished sequences are padded on
        new.append(chosen)
        if eos is not None and min_new_tokens == 0:
            done |= chosen == eos
            if bool(done.all()):
                break
        kv = forward.kv_of(cache, mask.shape[1])
        tokens = chosen[:, None]
        positions = positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    seconds = forward.clock() - start
    out = torch.stack(new, dim=1).tolist() if new else [[] for _ in ids]
    result = []
    for row in out:
        if eos in row and min_new_tokens == 0:
            row = row[: row.index(eos) + 1]
        result.append(Generation(tokenizer.decode(row, skip_special_tokens=True), len(row), seconds))
    return result
