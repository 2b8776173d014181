"""Reinforcement Speculative Decoding for fast listwise LLM reranking."""
