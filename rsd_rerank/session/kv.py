"""The prompts' KV, prefilled once and left-padded to the longest, and what each query holds of its
last verified ranking (its items, their KV and their rows): the prefix cache of the passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from rsd_rerank.prompt import Prompt
from rsd_rerank.session.forward import KV, Forward

__all__ = ["Held", "PromptKV"]


class PromptKV:
    """Q prompts prefilled one by one, their KV placed left-padded in one batch [Q, H, P, D].

    A padded prefill would need an explicit [B, H, P, P] attention mask (slow paths; on a CPU slower
    than one by one) and gains little over one compute-bound forward per long prompt. Every later
    forward therefore passes an explicit attention mask and position ids (transformers would
    otherwise number the padding).
    """

    def __init__(self, forward: Forward, prompts: Sequence[Prompt]):
        start = forward.clock()
        device = forward.device
        self.lengths = [len(p.token_ids) for p in prompts]
        """Tokens of each prompt."""
        self.width = max(self.lengths)
        """P: every prompt's KV is left-padded to it."""
        self.mask = torch.zeros(len(prompts), self.width, dtype=torch.long, device=device)
        """[Q, P] ones at each prompt's real tokens."""
        self.kv: KV = []
        """[Q, H, P, D] per layer."""
        last_logits, hidden = [], []
        for q, prompt in enumerate(prompts):
            n = len(prompt.token_ids)
            ids = torch.tensor([prompt.token_ids], device=device)
            positions = torch.arange(n, device=device)[None]
            logits, cache, states = forward(ids, None, None, positions, keep=1, queries=None)
            hidden.append(states[0, -1])
            for layer, (k_, v_) in enumerate(forward.kv_of(cache, n)):
                if q == 0:
                    shape = (len(prompts), k_.shape[1], self.width, k_.shape[3])
                    self.kv.append((k_.new_zeros(shape), v_.new_zeros(shape)))
                self.kv[layer][0][q, :, self.width - n :] = k_[0]
                self.kv[layer][1][q, :, self.width - n :] = v_[0]
            self.mask[q, self.width - n :] = 1
            last_logits.append(logits[0, -1])
        self.length_tensor = torch.tensor(self.lengths, device=device)
        """[Q] real prompt tokens (the position of each query's first token after its prompt)."""
        self.left_padded = len(set(self.lengths)) > 1
        """Whether any prompt is padded (else forwards take the model's plain causal path)."""
        self.last_logits = last_logits
        """Per query, the [V] logits after the prompt (the first slot is read from them)."""
        self.hidden = torch.stack(hidden)
        """[Q, H] the last hidden state of each prompt (where row 0 is read)."""
        self.seconds = forward.clock() - start

    def unpadded(self, q: int) -> KV:
        """[1, H, n_q, D] per layer: query ``q``'s prompt KV without its left padding (views)."""
        start = self.width - self.lengths[q]
        return [(k_[q : q + 1, :, start:], v_[q : q + 1, :, start:]) for k_, v_ in self.kv]


@dataclass
class Held:
    """Per query, what the passes keep of its last verified ranking so that the next pass feeds only the
    tail after the shared prefix: its items (K-1 at most), the KV of the prompt and those items, and
    their rows.

    The KV's layout is the pass kind's: single-token passes keep [1, H, P + slots·step, D] in the
    batch's left-padded width; trie passes keep [1, H, n_q + tokens, D] without padding (items' chunks
    differ in length). None: the prompt's KV alone.
    """

    items: list[tuple[int, ...]] = field(default_factory=list)
    kv: list[KV | None] = field(default_factory=list)
    rows: list[torch.Tensor] = field(default_factory=list)
    """Per query, [n + 1, K] the rows of slots 0..n of its held ranking (row 0: the prompt's)."""

    def reset(self, row0: torch.Tensor, ks: Sequence[int]) -> None:
        """Hold nothing but the prompts (``row0`` [Q, K_max]: their first-slot rows)."""
        self.items = [()] * len(ks)
        self.kv = [None] * len(ks)
        self.rows = [row0[i, : ks[i]][None] for i in range(len(ks))]
