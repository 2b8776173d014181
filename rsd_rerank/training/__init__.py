"""Training RSD agents against any local causal LM: target cache, Stage I, RPO (``rsd-rerank train``)."""

from rsd_rerank.training.trainer import TrainConfig, train, validate

__all__ = ["TrainConfig", "train", "validate"]
