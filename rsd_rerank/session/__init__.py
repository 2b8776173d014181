"""One target LLM, Q prompts: prefill them once, then verify whole rankings of all Q in single forwards.

The session is the only code that calls the model. Its parts, each small enough to hold in one's head:

- ``target_session``: ``TargetSession``, the facade decoding uses (prefill, first_slot, verify,
  verify_many, greedy_rankings, stepwise_rows, expand, generate, forget).
- ``forward``: the one model call (cache keyword, out-of-memory message, device clock, the pass and
  token counters the decoding trace reads). A serving backend (docs/scale.md) would plug in here.
- ``kv``: the prompts' KV, left-padded to the longest, and what each query holds of its last verified
  ranking (the prefix cache).
- ``passes``, ``single``, ``trie``: the pass kinds, chosen once from the prompts' layouts —
  fixed-stride slots for single-token identifiers, trie-scored slots for multi-token ones.
- ``heads``: the tree-masked pass of the head-drafting baselines.
- ``generation``: free greedy generation (RankZephyr-style), through the same forward.
- ``batches``: sessions over groups of prompts (``--batch-size``, ``--max-batch-tokens``).
- ``verification``: the pure maths of a pass's result (greedy choices, i*, shared prefixes).

A verification pass feeds K-1 identifiers with their separators (76 tokens for K = 20 with
SmolLM2's tokenizer) on top of the cached prompt, and only the tail that differs from the query's
last verified ranking: rows and KV of the shared prefix are reused. A pass takes any set of queries,
each with its own B rankings of its own K, in one forward.
"""

from rsd_rerank.session.batches import batched_sessions
from rsd_rerank.session.forward import KV
from rsd_rerank.session.generation import Generation
from rsd_rerank.session.heads import Expansion
from rsd_rerank.session.target_session import TargetSession
from rsd_rerank.session.verification import Verification, accepted_length, greedy_choices, greedy_item

__all__ = [
    "KV",
    "Expansion",
    "Generation",
    "TargetSession",
    "Verification",
    "accepted_length",
    "batched_sessions",
    "greedy_choices",
    "greedy_item",
]
