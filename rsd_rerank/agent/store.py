"""Agent checkpoints (``agent.json`` + ``model.safetensors``) and the bundled agents shipped in the package."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rsd_rerank.agent.networks import K_TIED, Agent, AgentConfig
from rsd_rerank.files import atomic_write, replacing
from rsd_rerank.targets import hash_tensors, tokenizer_fingerprint

__all__ = ["BUNDLED", "agent_digest", "load_agent", "resolve_agent", "save_agent"]

log = logging.getLogger(__name__)


def save_agent(agent: Agent, directory: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` and ``agent.json`` (config + metadata) into ``directory``, each atomically."""
    from safetensors.torch import save_file

    directory = Path(directory)
    with replacing(directory / "model.safetensors") as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in agent.state_dict().items()}, str(tmp))
    meta = {"config": asdict(agent.config), **agent.metadata}
    atomic_write(directory / "agent.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return directory


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def load_agent(directory: str | os.PathLike, target=None, k: int | None = None) -> Agent:
    """Load a checkpoint directory and check that it fits the target and list length it will serve.

    Every call returns a new ``Agent``: callers may train or move it without touching anyone else's.

    Raises:
        ValueError: no checkpoint there; a K-tied network asked for another K; a target whose
            tokenizer differs from the one the agent was trained with (its identifiers would be
            other tokens).

    A different target (the paper's "adaptation") loads with a warning: with the same tokenizer for any
    network, with any tokenizer for an ``equivariant`` one (it reads no tokens). An agent trained across
    several targets loads on any other without one.
    """
    path = Path(directory).resolve()
    # Size and mtime of both files key the cache: a checkpoint rewritten in the same process (training,
    # then loading) is read again, while ranking query after query reads the files once.
    meta, weights = _read(str(path), _stamp(path / "agent.json"), _stamp(path / "model.safetensors"))
    meta = json.loads(meta)
    config = _config_of(meta.pop("config"))
    if k is not None and config.k is not None and config.k != k:
        raise ValueError(
            f"agent {path.name} ({config.network}) was trained for K = {config.k} items, the list has {k}; "
            "use an 'equivariant' agent for other list lengths"
        )
    if target is not None:
        fingerprint = tokenizer_fingerprint(target.tokenizer)
        # The K-tied networks read rows whose columns are identifiers in token order; the equivariant
        # one reads each item's own log-probabilities and slots, never a token: any tokenizer serves.
        if meta.get("tokenizer") != fingerprint and config.network in K_TIED:
            raise ValueError(
                f"agent {path.name} was trained with tokenizer {meta.get('tokenizer')} ({meta.get('target')}), "
                f"the target {target.name} has tokenizer {fingerprint}: its identifier tokens differ"
            )
        # An agent trained across targets is meant for others (``UNIVERSAL``); one trained on one is not.
        if meta.get("target") != target.name and len(meta.get("targets", [None])) == 1:
            _warn_adaptation(str(path), str(meta.get("target")), target.name)
    agent = Agent(config, meta)
    agent.load_state_dict(weights)  # copies: the cached tensors are never the agent's parameters
    return agent.eval()


def _config_of(stored: dict) -> AgentConfig:
    # Checkpoints written before the Jacobi features existed name none: theirs are the row summaries.
    return AgentConfig(**{"features": "rows", **stored})


@functools.cache
def _warn_adaptation(agent: str, trained_on: str, target: str) -> None:
    # Once per (agent, target): the agent is loaded for every query.
    log.warning("agent %s was trained on %s; using it for %s (adaptation)", agent, trained_on, target)


@functools.lru_cache(maxsize=16)
def _read(directory: str, meta_stamp: Any, weights_stamp: Any) -> tuple[str, dict]:
    """The checkpoint's ``agent.json`` text and weights, read once per version of the two files."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory)
    try:
        meta = (path / "agent.json").read_text()
        config = json.loads(meta)["config"]
        _config_of(config)
        weights = load_file(str(path / "model.safetensors"))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, SafetensorError) as err:
        raise ValueError(f"{path} is not an agent checkpoint (agent.json + model.safetensors): {err}") from err
    return meta, weights


BUNDLED = Path(__file__).resolve().parent.parent / "checkpoints"
"""Agents shipped inside the package, one folder each (``README.md`` gives the command behind each)."""


def resolve_agent(agent: str | os.PathLike | None, target, k: int) -> Agent:
    """The agent for ``rsd`` on ``target`` with K items: a checkpoint directory, a bundled agent's
    name, or (None) the target's default in ``DEFAULT_AGENT``, else the universal agent ``UNIVERSAL``
    (with a warning that says so).

    Raises:
        ValueError: no such checkpoint, or a K-tied agent that does not fit the target's K or tokenizer.
    """
    if agent is None:
        agent = default_agent(target.name)
        if agent == UNIVERSAL:
            _warn_universal(target.name)
    path = Path(agent)
    if not path.is_dir():
        if not (BUNDLED / str(agent)).is_dir():
            names = ", ".join(sorted(p.name for p in BUNDLED.iterdir() if p.is_dir())) if BUNDLED.is_dir() else ""
            raise ValueError(f"no agent checkpoint {str(agent)!r}: not a directory, nor a bundled agent ({names})")
        path = BUNDLED / str(agent)
    return load_agent(path.resolve(), target=target, k=k)


DEFAULT_AGENT = {
    "smollm2": "smollm2",
    "smollm2-reranker": "smollm2-reranker",
    "random-llama(seed=0,init=0.1,h=256,L=4)": "random-llama-jacobi",
}
"""Target name → the bundled agent ``rsd`` uses on it by default (each trained on that target; the
README's agents table gives the command behind each, and ``--agent NAME`` picks any other)."""

UNIVERSAL = "universal"
"""The bundled agent for every other target: equivariant with Jacobi features, trained across six
targets in three families (random Llamas of three seeds and two inits; SmolLM2 with letters and with
numbers; smollm2-reranker). It reads item log-probabilities and slots, never a token, so it loads on any
tokenizer and identifier scheme (``benchmarks/results/universal.md``: its fidelity on targets it never
saw). Alone it trails GSD on a target that writes near identifier order (SmolLM2: RSD@5 0.959 against
0.985, ``fidelity-smollm2-universal.md``), hence ``rsd-drafts``, which verifies GSD's draft beside it."""


def default_agent(target: str) -> str:
    """The bundled agent ``rsd`` picks on the target named ``target`` when no ``--agent`` is given."""
    return DEFAULT_AGENT.get(target, UNIVERSAL)


@functools.cache
def _warn_universal(target: str) -> None:
    # Once per target: the agent is resolved for every query.
    log.warning(
        "no bundled agent was trained on %s; rsd uses the bundled universal agent %r (equivariant, trained "
        "across targets; it can trail gsd on a model that writes near identifier order: `rsd-rerank difficulty` "
        "measures every method on this model and says which to use, or train an agent with `rsd-rerank train` "
        "and pass --agent DIR)",
        target,
        UNIVERSAL,
    )


def agent_digest(agent: Agent) -> str:
    """sha256 of an agent's weights, byte for byte: what keys a benchmark's records of it, since a
    retrained agent keeps its name."""
    digest = hashlib.sha256()
    hash_tensors(digest, agent.state_dict().items())
    return digest.hexdigest()[:16]
