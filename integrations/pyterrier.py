"""PyTerrier: ``bm25 % 100 >> RSD(...)`` on the standard ``qid, query, docno, text, score, rank`` frames.

An optional extra (``pip install rsd-rerank[pyterrier]``). ``RSD`` is a ``pt.Transformer`` that
reranks each query's documents through ``rerank_windowed``, the path ``rsd-rerank rerank`` takes:
RankLLM's prompts and sliding windows, the batched engine. Only PyTerrier's DataFrame API is used,
so no Java and no Terrier jars are needed (the retriever before it may be anything).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyterrier as pt

from rsd_rerank.methods import DecodingConfig
from rsd_rerank.prompt import PromptConfig
from rsd_rerank.runs import BatchConfig, WindowConfig
from rsd_rerank.targets import Target, load_target

__all__ = ["RSD"]

_NEEDED = ("qid", "query", "docno")


class RSD(pt.Transformer):
    """Reranks a PyTerrier result frame with up-to-down speculative decoding.

    Args:
        model: as ``rsd_rerank.targets.load_target`` (None: the embedded SmolLM2), or a loaded ``Target``.
        decoding: method, budget and agent (``rsd_rerank.methods.DecodingConfig``).
        prompt: RankLLM template and passage truncation.
        windows: how many documents per query are reranked and RankLLM's sliding windows over them.
        batching: queries decoded together.
        text_field: the frame's column with the passage text.
        device, dtype: where a model loaded by name runs.

    Each query's documents are taken in rank order (``rank``, else ``score``); the output holds the
    same rows and columns, reordered, with ``score`` strictly decreasing and ``rank`` from 0.
    """

    def __init__(
        self,
        model: Any = None,
        decoding: DecodingConfig = DecodingConfig(),
        prompt: PromptConfig = PromptConfig(),
        windows: WindowConfig = WindowConfig(),
        batching: BatchConfig = BatchConfig(),
        text_field: str = "text",
        device: str = "auto",
        dtype: str = "auto",
    ) -> None:
        self.target: Target = load_target(model, device=device, dtype=dtype)
        self.decoding, self.prompt, self.windows, self.batching = decoding, prompt, windows, batching
        self.text_field = text_field

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        from rsd_rerank.integrations.rank_llm import rerank_windowed, text_request

        missing = [c for c in (*_NEEDED, self.text_field) if c not in inp.columns]
        if missing:
            raise ValueError(
                f"RSD needs the columns {', '.join((*_NEEDED, self.text_field))}; the frame lacks {', '.join(missing)} "
                "(add the text with a pt.text.get_text step before RSD)"
            )
        if inp.empty:
            return inp.copy()
        order = "rank" if "rank" in inp.columns else "score"
        groups = {
            str(qid): group.sort_values(order, ascending=order == "rank", kind="stable")
            for qid, group in inp.groupby("qid", sort=False)
        }
        requests = []
        for qid, group in groups.items():
            docnos = [str(d) for d in group["docno"]]
            if len(set(docnos)) != len(docnos):
                raise ValueError(f"query {qid!r} lists a docno twice")
            requests.append(text_request(qid, str(group["query"].iloc[0]), docnos, list(group[self.text_field])))
        frames = []
        for batch in rerank_windowed(self.target, requests, self.decoding, self.prompt, self.batching, self.windows):
            for reranked in batch:
                group = groups[reranked.qid].set_index(groups[reranked.qid]["docno"].astype(str), drop=False)
                frame = group.loc[reranked.docids].reset_index(drop=True)
                frame["score"] = [float(len(frame) - i) for i in range(len(frame))]
                frame["rank"] = range(len(frame))
                frames.append(frame)
        return pd.concat(frames, ignore_index=True)
