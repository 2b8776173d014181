"""Fit an RSD agent to a target LLM: target cache → Stage I (supervised) → Stage II (RPO), with validation.

Everything random comes from ``TrainConfig.seed``: the train/validation split, the query order of
each epoch and every sampled trajectory (its generator is seeded by (seed, epoch, query)), so a run
resumed from its last checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rsd_rerank.agent import Agent, AgentConfig, AgentProposer, save_agent
from rsd_rerank.config import bounded, check_ranges
from rsd_rerank.decoding import decode_many
from rsd_rerank.files import replacing
from rsd_rerank.metrics import similarity
from rsd_rerank.prompt import PromptConfig, numeric_identifiers, request_prompts
from rsd_rerank.proposers import Round
from rsd_rerank.runs import BatchConfig
from rsd_rerank.session import TargetSession, batched_sessions
from rsd_rerank.targets import Target, tokenizer_fingerprint
from rsd_rerank.training.cache import CachedQuery, cached_queries
from rsd_rerank.training.rpo import ADVANTAGES, rpo_loss, supervised_loss

__all__ = ["TrainConfig", "train", "validate"]

log = logging.getLogger(__name__)

VALIDATION_BUDGETS = (1, 3, 5)


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run (stored in the checkpoint's metadata)."""

    agent: AgentConfig = field(default_factory=AgentConfig)
    """The agent's network and policy."""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    """How training requests become prompts (as at ranking time)."""
    budget: int = bounded(5, 1)
    """T: passes per trajectory (RPO) and of the cached consensus trajectory (Stage I states)."""
    group: int = bounded(8, 1)
    """G: sampled trajectories per query in RPO (plus one greedy reference)."""
    stage1_epochs: int = bounded(20, 0)
    """Stage I (supervised) epochs over every cached consensus state."""
    stage1_lr: float = 1e-3
    """Adam learning rate of Stage I."""
    rpo_epochs: int = bounded(0, 0)
    """RPO epochs; 0, the default, stops after Stage I (the paper's "w/o RPO"): RPO added nothing measurable on any target (README, "RPO, settled")."""
    rpo_lr: float = 1e-4
    """Adam learning rate of RPO."""
    rpo_queries: int | None = bounded(None, 1)
    """RL queries per epoch (the first of each epoch's shuffled order); None = all training queries."""
    batch: int = bounded(16, 1)
    """Queries per Adam step."""
    beta: float = 0.1
    """KL weight to the frozen reference policy (refreshed at the start of every RPO epoch)."""
    advantage: str = "reference"
    """``reference`` (R_i − R_greedy) or ``group`` (R_i − mean of the others; the paper's "w/o RA")."""
    val_queries: int = bounded(64, 0)
    """Training queries held out for validation (never trained on)."""
    save_every: int = bounded(64, 1)
    """RPO queries between checkpoints."""
    seed: int = 0
    """Fixes the split, each epoch's query order and every sampled trajectory."""

    def __post_init__(self):
        if self.advantage not in ADVANTAGES:
            raise ValueError(f"unknown advantage {self.advantage!r}; choose from {', '.join(ADVANTAGES)}")
        check_ranges(self)


def _states(queries: list[CachedQuery], weights: Sequence[float]) -> list[tuple[Round, torch.Tensor, torch.Tensor]]:
    """Stage I batches: the cached consensus states grouped by round t, with their targets and the
    weight of each query's states."""
    by_round: dict[int, list[tuple[CachedQuery, float]]] = {}
    for q, w in zip(queries, weights, strict=True):
        for t in range(1, q.rankings.shape[0] + 1):
            by_round.setdefault(t, []).append((q, w))
    out = []
    for t, group in sorted(by_round.items()):
        rankings = torch.stack([q.rankings[:t] for q, _ in group])
        matrices = torch.stack([q.matrices[:t] for q, _ in group])
        accepted = torch.stack([q.accepted[:t] for q, _ in group])
        wanted = torch.stack([q.target for q, _ in group])
        out.append((Round(rankings, matrices, accepted), wanted, torch.tensor([w for _, w in group])))
    return out


def family(target: str) -> str:
    """The family of a target name: what comes before its settings (``random-llama(seed=1,…)`` →
    ``random-llama``; ``smollm2-reranker(runs/…/step-400)`` → ``smollm2-reranker``;
    ``smollm2[rank_zephyr_template.yaml]`` → ``smollm2``)."""
    return target.split("(", 1)[0].split(":", 1)[0].split("[", 1)[0]


def family_weights(names: Sequence[str]) -> list[float]:
    """Per target, 1 / (targets of its family), scaled to mean 1: every family's states weigh the same
    in Stage I however many of its members train the agent (three random Llamas are one family)."""
    counts = [sum(family(m) == family(n) for m in names) for n in names]
    raw = [1.0 / c for c in counts]
    return [w * len(raw) / sum(raw) for w in raw]


def worst_target(entry: dict) -> float:
    """A history entry's score for choosing the checkpoint: the lowest, over targets, of the mean KT over
    the validation budgets. The pooled mean would let the targets the agent suits hide one it fails."""
    per_target = entry["per_target"]
    return min(float(np.mean([m["KT"] for m in metrics.values()])) for metrics in per_target.values())


def validate(agent: Agent, sessions: list[TargetSession], queries: list[CachedQuery]) -> dict:
    """KT/SR/FD/KD of the greedy agent to the target at each validation budget.

    Sessions are kept across epochs: their prompt KV is the same every time.
    """
    agent.eval()
    found = {t: [] for t in VALIDATION_BUDGETS}
    proposer = AgentProposer(agent)
    for session in sessions:
        session.forget()
        decoded = decode_many(session, dict.fromkeys(range(len(session.prompts)), proposer), max(VALIDATION_BUDGETS))
        for q in range(len(session.prompts)):
            for t in VALIDATION_BUDGETS:
                found[t].append(decoded[q].at(t)[0].cpu().numpy())
    targets = np.stack([q.target.numpy() for q in queries])
    return {f"T={t}": similarity(np.stack(found[t]), targets) for t in VALIDATION_BUDGETS}


def _generator(seed: int, *parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0]))


def _save(out: Path, agent: Agent, reference: Agent, optimizer, progress: dict) -> None:
    save_agent(agent, out)
    with replacing(out / "train_state.pt") as tmp:
        torch.save(
            {
                "agent": agent.state_dict(),
                "reference": reference.state_dict(),
                "optimizer": optimizer.state_dict(),
                "progress": progress,
            },
            tmp,
        )


def _by_target(chunk: list[int], train_of: list[tuple[int, int]]) -> list[tuple[int, list[int]]]:
    """The training examples of ``chunk`` grouped by target, in order of first appearance (one session each)."""
    groups: dict[int, list[int]] = {}
    for i in chunk:
        groups.setdefault(train_of[i][0], []).append(i)
    return list(groups.items())


def _sessions(target: Target, requests: list, prompt: PromptConfig, batching: BatchConfig) -> list[TargetSession]:
    """Batched sessions over ``requests``, in order (``batching`` decides the groups)."""
    prompts = request_prompts(target.tokenizer, requests, prompt, target.max_positions)
    return [session for _, session in batched_sessions(target, prompts, batching)]


def train(
    target: Target | Sequence[Target],
    requests: list,
    out: str | os.PathLike,
    config: TrainConfig = TrainConfig(),
    resume: bool = False,
    batching: BatchConfig = BatchConfig(),
    overwrite: bool = False,
    precompute: Callable[[list, PromptConfig, int, BatchConfig], None] | None = None,
    prompts: Sequence[PromptConfig] | None = None,
) -> Agent:
    """Train an agent on ``requests`` (RankLLM requests of equal K) and write it to ``out``.

    ``target`` may be several targets: one agent then learns from every target's rankings of the same
    requests (the universal agent's recipe; the train/validation split is the same for each), and the
    checkpoint records them all.

    ``out`` receives the final agent (``agent.json``, ``model.safetensors``), the Stage I agent in
    ``out/stage1`` and ``train_state.pt``, from which ``resume=True`` continues after a kill.
    ``batching`` groups queries into one session for the target cache, validation and RPO rollouts
    (rollouts never span an Adam step, so every trajectory is sampled from the current policy).
    ``precompute(requests, prompt, budget, batching)``, if given, fills the target cache first (e.g.
    Ray workers, ``rsd_rerank.integrations.scale``); the cache then only reads what it wrote.
    ``prompts``: one prompt setting per target (default: ``config.prompt`` for each), e.g. the same model
    with numbers for identifiers beside it with letters; a target whose prompt is not ``config.prompt``
    is named with its template (``smollm2[rank_zephyr_template.yaml]``).

    Raises:
        ValueError: too few requests for the validation split, lists of unequal length for a K-tied
            network, targets of different tokenizers for a K-tied network, several targets with
            ``precompute``, or ``out`` holding a run or an agent that neither ``resume`` nor
            ``overwrite`` allows.
    """
    out = Path(out)
    targets = [target] if isinstance(target, Target) else list(target)
    prompts = [config.prompt] * len(targets) if prompts is None else list(prompts)
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompt settings for {len(targets)} targets")
    names = [
        t.name if p == config.prompt else f"{t.name}[{Path(p.template).name}]"
        for t, p in zip(targets, prompts, strict=True)
    ]
    if not targets or len(set(names)) < len(names):
        raise ValueError(f"train on one or more distinct targets, not {names}")
    if precompute is not None and len(targets) > 1:
        raise ValueError(
            "precomputing the target cache (Ray workers) serves one target; train several with --workers 1"
        )
    fingerprints = sorted({tokenizer_fingerprint(t.tokenizer) for t in targets})
    single = sum(len(r.candidates) < 2 for r in requests)
    if single:
        log.warning("%d requests with a single candidate have nothing to rank and are left out", single)
        requests = [r for r in requests if len(r.candidates) >= 2]
    if (out / "train_state.pt").exists() and not resume and not overwrite:
        raise ValueError(f"{out} holds a training run; pass --resume to continue it or choose another --out")
    held = [name for name in ("agent.json", "model.safetensors") if (out / name).exists()]
    if held and not resume and not overwrite:
        raise ValueError(
            f"{out} holds an agent ({', '.join(held)}); pass --overwrite to replace it or choose another --out"
        )
    ks = {len(r.candidates) for r in requests}
    agent_config = config.agent
    if agent_config.k is not None and ks != {agent_config.k}:
        raise ValueError(
            f"the {agent_config.network!r} network ranks K = {agent_config.k}, the lists have {sorted(ks)}"
        )
    if agent_config.k is not None and len(fingerprints) > 1:
        raise ValueError(
            f"the {agent_config.network!r} network reads identifier tokens: its targets must share a tokenizer "
            f"({', '.join(names)} have {len(fingerprints)})"
        )
    if len(requests) <= config.val_queries:
        raise ValueError(f"{len(requests)} requests leave none to train on after {config.val_queries} for validation")

    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(requests))
    val_idx, train_idx = order[: config.val_queries], order[config.val_queries :]
    if precompute is not None:
        precompute(requests, config.prompt, config.budget, batching)
    # Aligned with the requests by position: qids may repeat (e.g. one query's several windows).
    cached = [
        cached_queries(t, requests, p, config.budget, batching=batching) for t, p in zip(targets, prompts, strict=True)
    ]
    # Training examples are (target, request) pairs, the targets' in turn; so are the validation ones.
    train_of = [(t, int(i)) for t in range(len(targets)) for i in train_idx]
    train_req, train_q = [requests[i] for _, i in train_of], [cached[t][i] for t, i in train_of]
    val_of = {name: [cached[t][i] for i in val_idx] for t, name in enumerate(names)}

    torch.manual_seed(config.seed)
    metadata = {
        # One name, read by the adaptation warning; an agent of several targets joins theirs.
        "target": " + ".join(names),
        "targets": names,
        "tokenizer": "+".join(fingerprints),
        "identifiers": "+".join(sorted({"numbers" if numeric_identifiers(p.template) else "alpha" for p in prompts})),
        "template": "+".join(dict.fromkeys(Path(p.template).name for p in prompts)),
        "training": {k: v for k, v in asdict(config).items() if k != "agent"},
        "data": {
            "train_queries": len(train_q),
            "val_queries": len(names) * len(val_idx),
            "k": sorted(ks),
        },
    }
    device = targets[0].model.device  # the agent lives where the loop's tensors do
    agent = Agent(agent_config, metadata).to(device)
    reference = copy.deepcopy(agent)
    optimizer = torch.optim.Adam(agent.parameters(), lr=config.stage1_lr)
    progress = {"stage": "stage1", "epoch": 0, "position": 0, "history": []}
    if resume and (out / "train_state.pt").exists():
        state = torch.load(out / "train_state.pt", weights_only=False, map_location=device)
        agent.load_state_dict(state["agent"])
        reference.load_state_dict(state["reference"])
        progress = state["progress"]
        if progress["stage"] == "rpo":
            optimizer = torch.optim.Adam(agent.parameters(), lr=config.rpo_lr)
        optimizer.load_state_dict(state["optimizer"])
        log.info("resuming at %s epoch %d query %d", progress["stage"], progress["epoch"], progress["position"])

    val_req = [requests[i] for i in val_idx]
    val_sessions = {n: _sessions(t, val_req, p, batching) for n, t, p in zip(names, targets, prompts, strict=True)}

    def record(stage: str, epoch: int, extra: dict) -> None:
        # Per target (every target holds out the same queries, so the pooled figures are their means).
        per_target = {name: validate(agent, val_sessions[name], val_of[name]) for name in names} if len(val_idx) else {}
        pooled = {
            t: {m: float(np.mean([v[t][m] for v in per_target.values()])) for m in metrics}
            for t, metrics in next(iter(per_target.values()), {}).items()
        }
        entry = {"stage": stage, "epoch": epoch, **extra, "validation": pooled, "per_target": per_target}
        progress["history"].append(entry)
        lines = [f"{stage} epoch {epoch}: " + ", ".join(f"{t} KT {m['KT']:.3f}" for t, m in pooled.items())]
        if len(per_target) > 1:
            lines += [
                f"  {name}: " + ", ".join(f"{t} KT {m['KT']:.3f}" for t, m in metrics.items())
                for name, metrics in per_target.items()
            ]
        tqdm.write("\n".join(lines))
        best = progress.get("best")
        if per_target and (best is None or worst_target(entry) > worst_target(progress["history"][best["entry"]])):
            progress["best"] = {"entry": len(progress["history"]) - 1, "state": copy.deepcopy(agent.state_dict())}

    def keep_best() -> None:
        """The agent of the history entry with the best worst target (the untrained one included)."""
        if "best" in progress:
            agent.load_state_dict(progress["best"]["state"])
            chosen = progress["history"][progress["best"]["entry"]]
            agent.metadata.update(validation=chosen["validation"], per_target=chosen["per_target"],
                                  chosen={"stage": chosen["stage"], "epoch": chosen["epoch"]})  # fmt: skip
        agent.metadata["history"] = list(progress["history"])

    if progress["stage"] == "stage1":
        if progress["epoch"] == 0 and not progress["history"]:
            record("init", 0, {})
        weight_of = family_weights(names)
        stage1 = [
            (state.to(device), wanted.to(device), w.to(device))
            for state, wanted, w in _states(train_q, [weight_of[t] for t, _ in train_of])
        ]
        while progress["epoch"] < config.stage1_epochs:
            agent.train()
            epoch = progress["epoch"]
            losses = []
            g = _generator(config.seed, 1, epoch)
            for state, wanted, w in stage1:
                perm = torch.randperm(wanted.shape[0], generator=g)
                for rows in perm.split(config.batch * 4):
                    loss = supervised_loss(agent, state.select(rows), wanted[rows], w[rows])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    losses.append(loss.item())
            progress["epoch"] += 1
            record("stage1", progress["epoch"], {"loss": float(np.mean(losses))})
            _save(out, agent, reference, optimizer, progress)
        # The Stage I agent (the paper's "w/o RPO" ablation): the best of its epochs on the worst target.
        # RPO then starts from it.
        keep_best()
        save_agent(agent, out / "stage1")
        progress.update(stage="rpo", epoch=0, position=0)
        optimizer = torch.optim.Adam(agent.parameters(), lr=config.rpo_lr)
        reference.load_state_dict(agent.state_dict())
        _save(out, agent, reference, optimizer, progress)

    n_rl = len(train_req) if config.rpo_queries is None else min(config.rpo_queries, len(train_req))
    while progress["epoch"] < config.rpo_epochs:
        epoch = progress["epoch"]
        order = np.random.default_rng([config.seed, 2, epoch]).permutation(len(train_req))[:n_rl]
        if progress["position"] == 0:
            reference.load_state_dict(agent.state_dict())
        bar = tqdm(total=n_rl, initial=progress["position"], desc=f"RPO epoch {epoch + 1}", unit="query")
        stats = []
        optimizer.zero_grad()
        while progress["position"] < n_rl:
            # The queries up to the next Adam step (or fewer: --batch-size), rolled out in one session.
            start = progress["position"]
            stop = min(start + batching.batch_size, (start // config.batch + 1) * config.batch, n_rl)
            chunk = [int(i) for i in order[start:stop]]
            for t, group in _by_target(chunk, train_of):
                session = _sessions(
                    targets[t],
                    [train_req[i] for i in group],
                    prompts[t],
                    BatchConfig(len(group), None, batching.batch_invariant),
                )[0]
                agent.eval()
                proposers = {
                    q: AgentProposer(agent, _generator(config.seed, 3, epoch, i), greedy_rows=1)
                    for q, i in enumerate(group)
                }
                rollouts = decode_many(session, proposers, config.budget, trajectories=1 + config.group)
                agent.train()
                for q, i in enumerate(group):
                    loss, s = rpo_loss(
                        agent, reference, rollouts[q], train_q[i].target, config.advantage, config.beta, config.budget
                    )
                    (loss / config.batch).backward()
                    stats.append(s)
            progress["position"] = stop
            bar.update(len(chunk))
            if progress["position"] % config.batch == 0 or progress["position"] == n_rl:
                optimizer.step()
                optimizer.zero_grad()
                bar.set_postfix(reward=f"{np.mean([x['reward_ref'] for x in stats[-config.batch :]]):.3f}")
            if progress["position"] % config.save_every == 0 and progress["position"] % config.batch == 0:
                _save(out, agent, reference, optimizer, progress)
        bar.close()
        progress.update(epoch=epoch + 1, position=0)
        record("rpo", epoch + 1, {k: float(np.mean([x[k] for x in stats])) for k in stats[0]} if stats else {})
        _save(out, agent, reference, optimizer, progress)

    keep_best()
    save_agent(agent, out)
    return agent.eval()
