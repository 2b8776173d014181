"""RankLLM users swap in one class: ``Reranker(RSDReranker(...))`` with RankLLM's windows and writers.

    .venv/bin/python examples/rankllm_reranker.py

Reranks the two example requests (20 candidates each) with the embedded SmolLM2 and its bundled RSD
agent at T = 5 passes per window, writes a TREC run with RankLLM's ``DataWriter`` and prints what each
window cost (from RankLLM's ``InferenceInvocation`` history).
"""

from rank_llm.data import DataWriter, read_requests_from_file
from rank_llm.rerank.reranker import Reranker

from rsd_rerank.integrations.rank_llm import RSDReranker

reranker = Reranker(RSDReranker(method="rsd", budget=5))  # embedded SmolLM2, RankZephyr alpha template
requests = read_requests_from_file("examples/requests.jsonl")
results = reranker.rerank_batch(requests, rank_end=100)  # windows of 20, stride 10, as RankLLM runs them
DataWriter(results).write_in_trec_eval_format("runs/example.rankllm.rsd5.trec")
for result in results:
    for invocation in result.invocations_history:
        usage = invocation.token_usage
        print(
            f"qid {result.query.qid}: {usage['passes']} passes, i* per round {usage['accepted']}, "
            f"prefill {usage['prefill_seconds']:.2f}s, decode {usage['decode_seconds']:.2f}s"
        )
    print(" > ".join(c.docid for c in result.candidates[:5]), "…")
