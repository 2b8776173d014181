"""Adapters to RankLLM, Pyserini, ir_datasets and ir_measures, and the ``pipeline`` / ``compare`` work.

The folder sits at the repository's top level (the design card's layout) but is installed as a
sub-package of the core: import it as ``rsd_rerank.integrations`` (``from
rsd_rerank.integrations.rank_llm import RSDReranker``); ``pyproject.toml`` maps the folder. It may use
the core; the core never imports it, nor pyserini, ir_datasets or ray.
"""
