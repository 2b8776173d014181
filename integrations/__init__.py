"""Adapters to RankLLM, Pyserini and ir_datasets, imported as ``rsd_rerank.integrations``."""
