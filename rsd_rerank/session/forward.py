"""The one call of the model's forward: the cache keyword, the hidden-state hook, out-of-memory
errors, the device clock and the counters the decoding trace reads.

Every model call of a session (prefill, verification passes, decode steps, free generation) goes
through ``Forward.__call__``; only calls made for queries (``queries`` not None) count as passes.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Sequence

import torch
from transformers import DynamicCache

__all__ = ["KV", "Forward", "copied_row"]

KV = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer, (keys, values) of shape [B, heads, positions, head_dim]."""


@functools.cache
def _cache_kwarg(model_class: type) -> str:
    # transformers 5.23 renamed the forward's `past_key_values` to `cache` (the old name warns on every
    # call and goes in 5.40); the lent GPU machine runs an older 5.x that only knows the old name.
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def _out_cache(out) -> DynamicCache:
    return out["cache"] if "cache" in out else out["past_key_values"]


def copied_row(kv: KV, offset: int, row: int) -> KV:
    """Sequence ``offset + row`` of a batch's KV, copied so that the whole batch's cache can be freed."""
    i = offset + row
    return [(k_[i : i + 1].clone(), v_[i : i + 1].clone()) for k_, v_ in kv]


class Forward:
    """The target model's forward for Q queries, counted and timed.

    Attributes read by the decoding trace and the benchmarks: ``passes`` (forwards made for queries),
    ``query_passes`` (per query, the forwards it took part in), ``fed_tokens`` and ``fed_sequences``
    (per forward, tokens per sequence and sequences), ``forward_seconds``.
    """

    def __init__(self, model, queries: int):
        self.model = model
        self.device = model.device
        self.passes = 0
        self.query_passes = [0] * queries
        self.fed_tokens: list[int] = []
        self.fed_sequences: list[int] = []
        self.forward_seconds = 0.0

    def clock(self) -> float:
        """``time.perf_counter()`` after the device has finished its queued work (CUDA runs asynchronously)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _cache(self, kv: KV | None) -> DynamicCache:
        # Built without the model's config: every layer a full ``DynamicLayer``, sliding-window layers
        # (Mistral, Gemma 2/3) included. The model's own mask still applies each layer's window over
        # absolute positions; the session needs every position kept to rewind to a verified prefix,
        # to hold rows and to batch queries of different lengths.
        return DynamicCache() if kv is None else DynamicCache(ddp_cache_data=kv)

    @torch.inference_mode()
    def __call__(
        self,
        input_ids: torch.Tensor,
        kv: KV | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        keep: torch.Tensor | int,
        queries: Sequence[int] | None,
        same_pass: bool = False,
    ) -> tuple[torch.Tensor, DynamicCache, torch.Tensor]:
        """Logits [B, len(keep), V] (float32) at positions ``keep`` of ``input_ids`` [B, n] after ``kv``, the
        cache, and the last hidden states [B, len(keep), H] there (the LM head's input: what prediction
        heads read).

        ``attention_mask`` [B, past + n] (None: nothing padded) and ``position_ids`` [B, n] are explicit
        (padding on both sides). ``queries``: the queries this forward serves, counted as one pass for
        each; None for work that is not a pass (the prompts' prefill, free generation). ``same_pass``: a
        forward that belongs to the previous one's pass (batch-invariant passes run one forward per
        ranking): its tokens and time are counted, not another pass.
        """
        start = self.clock() if queries is not None else 0.0
        if isinstance(keep, torch.Tensor):
            keep = keep.to(self.device)
        # logits_to_keep: only the slot positions go through the LM head, not every fed token.
        kwargs = {_cache_kwarg(type(self.model)): self._cache(kv)}
        seen: list[torch.Tensor] = []
        # The LM head's input is the final-norm hidden state at the kept positions; a hook reads it
        # without asking the model for every layer's states.
        hook = self.model.get_output_embeddings().register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
        try:
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                logits_to_keep=keep,
                **kwargs,
            )
        except torch.OutOfMemoryError as err:
            raise RuntimeError(
                f"out of memory on {self.device} in a forward of {input_ids.shape[0]} sequences of "
                f"{input_ids.shape[1]} new tokens; lower --batch-size or --max-batch-tokens"
            ) from err
        finally:
            hook.remove()
        logits = out.logits.float()
        if queries is not None and same_pass:
            self.fed_sequences[-1] += input_ids.shape[0]
            self.forward_seconds += self.clock() - start
        elif queries is not None:
            self.passes += 1
            for q in set(queries):
                self.query_passes[q] += 1
            self.fed_tokens.append(input_ids.shape[1])
            self.fed_sequences.append(input_ids.shape[0])
            self.forward_seconds += self.clock() - start
        return logits, _out_cache(out), seen[-1].float()

    @staticmethod
    def kv_of(cache: DynamicCache, expected_len: int) -> KV:
        """The cache's (keys, values) per layer, each holding ``expected_len`` positions.

        Raises:
            ValueError: a cache that drops positions (sliding window, compression): the session needs all.
        """
        kv = []
        for layer in cache.layers:
            keys, values = layer.keys, layer.values
            if keys is None or keys.shape[-2] != expected_len:
                raise ValueError(
                    f"the model's KV cache layer {type(layer).__name__} does not keep every position "
                    "(sliding-window or compressed cache); TargetSession needs full attention caches"
                )
            kv.append((keys, values))
        return kv
