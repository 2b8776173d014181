"""Training the paper's baselines on the target's own greedy rankings (never on test queries):
prediction heads for Blockwise and Medusa-1 on the frozen target, and LoRA fine-tunes of the target
with FIRST's loss (learning-to-rank on the first identifier's logits + SFT) or RankZephyr's (SFT).

Both start from the teacher: each training query's greedy ranking σ_tr (and, for heads, the target's
last hidden state at every slot of σ_tr), computed in batched sessions and kept per batch under
``<cache>/teacher`` (keyed by target, prompt settings and queries) so that a killed run resumes and
the methods share it. LoRA training checkpoints every ``save_every`` steps
(adapter, optimiser, the seeded order) and resumes to the same adapter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rsd_rerank.companions import MEDUSA_HEADS, Heads, save_heads
from rsd_rerank.config import bounded, check_ranges
from rsd_rerank.files import replace_folder, replacing
from rsd_rerank.metrics import kendall_tau
from rsd_rerank.prompt import PromptConfig, request_prompt, request_prompts
from rsd_rerank.registry import FINETUNES, HEADS
from rsd_rerank.runs import BatchConfig, batches
from rsd_rerank.session import TargetSession
from rsd_rerank.targets import Target, cache_dir, weights_fingerprint
from rsd_rerank.training.lora import train_lora
from rsd_rerank.training.reranker import (
    LOSSES,
    TEACHERS,
    RerankerExamples,
    cue_epochs,
    foreign_counts,
    list_sizes,
    order_by_score,
    own_among_foreign,
    teacher_scores,
)

__all__ = ["FINETUNED", "FinetuneConfig", "finetune"]

log = logging.getLogger(__name__)

FINETUNED = (*FINETUNES, "reranker")
"""What ``finetune`` makes: heads for ``blockwise`` / ``medusa``, LoRA rankers for ``first-ft`` / ``rankzephyr-ft``
(on the target's own greedy rankings), and ``reranker``: a LoRA that makes the target a content-driven listwise
reranker (candidates reshuffled every epoch, a content teacher; ``training.reranker``)."""


@dataclass(frozen=True)
class FinetuneConfig:
    """How a baseline's companion is trained on the target's own greedy rankings."""

    method: str = "medusa"
    """One of ``FINETUNED`` (the command makes you name it)."""
    epochs: int = bounded(2, 1)
    """Passes over the training queries."""
    lr: float = 1e-3
    """Adam's learning rate (heads and LoRA alike)."""
    head_rows: int = bounded(64, 1)
    """Heads: (query, slot) rows per Adam step (LoRA: every query is its own step, one long prompt each)."""
    lora_rank: int = bounded(8, 1)
    """LoRA rank r on every linear layer of the target (alpha = 2r)."""
    rank_weight: float = 1.0
    """``first-ft``: weight of the learning-to-rank loss on the first identifier's logits beside SFT."""
    save_every: int = bounded(25, 1)
    """LoRA: steps between resumable checkpoints."""
    lora_layers: int = bounded(0, 0)
    """LoRA only on the top N decoder layers (0: every layer); backpropagation then stops below them."""
    bf16_autocast: bool = False
    """LoRA: forward and backward under bfloat16 autocast (2-3x faster on CPUs with AMX; the adapter stays fp32)."""
    snapshot_every: int = bounded(0, 0)
    """LoRA: also keep the adapter every N steps in ``<out>/snapshots/step-N`` (to choose one on validation claims; 0: none)."""
    seed: int = 0
    """Fixes the shuffling (and so the whole run)."""
    teacher: str = "wordllama"
    """``reranker``: the content order it is taught (wordllama: similarity of claim and shown passage; fusion: that fused with the request's BM25 order)."""
    loss: str = "sft"
    """``reranker``: sft (next-token loss on the answer) or listmle (Plackett–Luce on the identifier logits at every slot + lm-weight × sft)."""
    lm_weight: float = 0.1
    """``reranker`` with ``--loss listmle``: weight of the next-token loss that keeps the format."""
    list_sizes: str = ""
    """``reranker``: candidates per list in epoch 1, 2, … (e.g. 5,10,20; the last repeats; a seeded subset of each request); empty: whole requests."""
    foreign: str = ""
    """``reranker``: passages from other claims' lists per list in epoch 1, 2, … (e.g. 3,5,0; with --list-sizes; the last repeats): easy lists first."""
    validate_every: int = bounded(0, 0)
    """``reranker``: content figures on the validation requests every N examples, into ``<out>/curve.jsonl`` (0: never)."""
    accumulate: int = bounded(1, 1)
    """LoRA: examples per Adam step, in one padded forward (the gradient is their mean)."""
    cue: str = ""
    """``reranker``: 1 or 0 per epoch (e.g. 1,0; the last repeats): in cue epochs the teacher's first passage starts with the claim itself, an exact match that teaches reading a passage and writing its identifier."""

    def __post_init__(self):
        check_ranges(self)
        if self.method not in FINETUNED:
            raise ValueError(f"finetune makes {', '.join(FINETUNED)}, not {self.method!r}")
        if self.teacher not in TEACHERS:
            raise ValueError(f"--teacher must be one of {', '.join(TEACHERS)}, not {self.teacher!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"--loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        foreign_counts(self.foreign, list_sizes(self.list_sizes))
        cue_epochs(self.cue)


def _teacher(
    target: Target,
    requests: list,
    prompts: list,
    prompt: PromptConfig,
    batching: BatchConfig,
    directory: Path,
    hidden: bool,
) -> list[dict[str, torch.Tensor]]:
    """Per query: ``target`` σ_tr [K] and (``hidden``) the target's last hidden state at every slot of
    σ_tr [K, H] and the identifiers' LM-head rows [K, H]. Batches are kept as files keyed by what
    made them, so a killed run computes only the missing ones."""
    from safetensors.torch import load_file, save_file

    key = {"target": weights_fingerprint(target.model), "prompt": asdict(prompt), "hidden": hidden}
    out: list[dict[str, torch.Tensor] | None] = [None] * len(requests)
    bar = tqdm(total=len(requests), desc=f"teacher ({target.name})", unit="query")
    for group in batches([len(p.token_ids) for p in prompts], batching):
        queries = [[r.query.text, [c.docid for c in r.candidates]] for r in (requests[i] for i in group)]

        def file(with_hidden: bool, queries=queries) -> Path:
            payload = json.dumps({**key, "hidden": with_hidden, "queries": queries}, sort_keys=True, default=str)
            return directory / f"{hashlib.sha256(payload.encode()).hexdigest()[:24]}.safetensors"

        path, richer = file(hidden), file(True)
        if not hidden and richer.exists():  # a heads teacher holds the rankings too
            entries = {name: t for name, t in load_file(str(richer)).items() if name.endswith(".target")}
        elif path.exists():
            entries = load_file(str(path))
        else:
            entries = _teacher_batch(TargetSession.from_prompts(target, [prompts[i] for i in group]), hidden)
            with replacing(path) as tmp:
                save_file(entries, str(tmp))
        for j, i in enumerate(group):
            out[i] = {name[len(f"{j}.") :]: t for name, t in entries.items() if name.startswith(f"{j}.")}
        bar.update(len(group))
    bar.close()
    return out  # type: ignore[return-value]


def _teacher_batch(session, hidden: bool) -> dict[str, torch.Tensor]:
    entries = {}
    greedy = session.greedy_rankings()
    for q, ranking in greedy.items():
        entries[f"{q}.target"] = torch.tensor(ranking)
        if hidden:
            k = session.ks[q]
            # A chain is a tree: one pass gives the hidden state at every slot of σ_tr.
            expansion = session.expand(ranking[:1], [tuple(ranking[1:j]) for j in range(2, k)], q)
            states = [session.first_hidden(q), expansion.prefix_hidden, *expansion.hidden]
            entries[f"{q}.hidden"] = torch.stack(states)[:k].cpu().contiguous()
            entries[f"{q}.unembedding"] = session.identifier_unembedding(q).cpu().contiguous()
    return entries


def _train_heads(target: Target, teacher: list[dict[str, torch.Tensor]], config: FinetuneConfig, out: Path) -> dict:
    """Every head j at every slot s of every query against σ_tr[s + j], over the items not placed before it."""
    ks = torch.tensor([len(entry["target"]) for entry in teacher])
    n, k, h = len(teacher), int(ks.max()), teacher[0]["hidden"].shape[1]
    count = MEDUSA_HEADS if config.method == "medusa" else k - 1
    hidden, unembedding = torch.zeros(n, k, h), torch.zeros(n, k, h)
    sigma = torch.zeros(n, k, dtype=torch.long)
    position = torch.full((n, k), k, dtype=torch.long)  # slot of each item (padding: never placed)
    for i, entry in enumerate(teacher):
        m = int(ks[i])
        hidden[i, :m], unembedding[i, :m], sigma[i, :m] = entry["hidden"], entry["unembedding"], entry["target"]
        position[i, entry["target"]] = torch.arange(m)
    pairs = torch.tensor([(i, slot) for i in range(n) for slot in range(int(ks[i]) - 1)])
    heads = Heads(h, count)
    optimizer = torch.optim.Adam(heads.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    offsets = torch.arange(1, count + 1)
    losses = []
    for epoch in range(config.epochs):
        order = pairs[torch.randperm(len(pairs), generator=generator)]
        total, rows = 0.0, 0
        for start in tqdm(range(0, len(order), config.head_rows), desc=f"{config.method} heads, epoch {epoch + 1}"):
            q, slot = order[start : start + config.head_rows].T
            scores = heads(hidden[q, slot], unembedding[q])  # [B, J, K]
            ahead = slot[:, None] + offsets[None, :]  # [B, J] the slot each head predicts
            valid = ahead < ks[q][:, None]
            wanted = sigma[q[:, None], ahead.clamp(max=k - 1)]  # [B, J]
            hidden_items = (position[q][:, None, :] < ahead[:, :, None]) | (
                torch.arange(k)[None, None, :] >= ks[q][:, None, None]
            )
            log_p = torch.log_softmax(scores.masked_fill(hidden_items, float("-inf")), dim=-1)
            picked = log_p.gather(-1, wanted[:, :, None])[:, :, 0]
            loss = -torch.where(valid, picked, 0.0).sum() / valid.sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, rows = total + float(loss.detach()) * int(valid.sum()), rows + int(valid.sum())
        losses.append(total / rows)
        log.info("%s heads epoch %d: loss %.4f", config.method, epoch + 1, losses[-1])
    save_heads(out, heads, target, config.method, {"config": asdict(config), "queries": n, "losses": losses})
    return {"method": config.method, "heads": count, "queries": n, "losses": losses}


class _GreedyExamples:
    """The companions' examples: every epoch, query i's prompt and the target's own greedy ranking."""

    def __init__(self, prompts: list, teacher: list[dict[str, torch.Tensor]]):
        self.prompts, self.teacher = prompts, teacher

    def __len__(self) -> int:
        return len(self.prompts)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps([list(p.token_ids) for p in self.prompts]).encode()).hexdigest()[:16]

    def example(self, epoch: int, i: int) -> tuple:
        sigma = self.teacher[i]["target"].tolist()
        return self.prompts[i], sigma, len(sigma)

    def single_token(self) -> bool:
        return all(p.layout.single_token for p in self.prompts)


def finetune(
    target: Target,
    requests: list,
    config: FinetuneConfig,
    out: str | os.PathLike,
    prompt: PromptConfig = PromptConfig(),
    batching: BatchConfig = BatchConfig(),
    resume: bool = False,
    overwrite: bool = False,
    validation: list | None = None,
) -> dict:
    """Train ``config.method``'s heads or fine-tuned ranker on ``requests`` (training queries only)
    against ``target``'s own greedy rankings, into ``out``. Returns a summary.

    The teacher's batches are always reused (each is a pure function of its key); an interrupted
    LoRA run continues with ``resume``; ``overwrite`` replaces a finished or interrupted one.

    Raises:
        ValueError: ``out`` holds a finished companion (without ``overwrite``) or an interrupted run
            (without ``resume`` or ``overwrite``).
    """
    out = Path(out)
    finished = [out / name for name in ("heads.json", "ranker.json") if (out / name).exists()]
    interrupted = out / "checkpoint.pt"
    if finished and not overwrite:
        raise ValueError(f"{out} already holds a finished {finished[0].stem}; pass --overwrite to replace it")
    if interrupted.exists() and not (resume or overwrite):
        raise ValueError(f"{out} holds an interrupted run; pass --resume to continue it or --overwrite to restart")
    # With --overwrite the old companion stays whole until the new one is: it is made beside ``out``
    # and swapped in at the end, so a failure at any point (bad input included) leaves ``out`` as it was.
    work = out
    if overwrite and (finished or (interrupted.exists() and not resume)):
        work = out.with_name(f".{out.name}.new")
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    try:
        summary = _finetune_into(target, requests, config, work, prompt, batching, validation)
    except BaseException:
        if work != out:  # a failed --overwrite leaves the old companion and nothing beside it
            shutil.rmtree(work, ignore_errors=True)
        raise
    if work != out:
        replace_folder(work, out)
    return summary


def _finetune_into(
    target: Target,
    requests: list,
    config: FinetuneConfig,
    out: Path,
    prompt: PromptConfig,
    batching: BatchConfig,
    validation: list | None = None,
) -> dict:
    if config.method == "reranker":
        examples = RerankerExamples(target.tokenizer, requests, prompt, config, target.max_positions)
        validate = None if not validation else _reranker_validation(target, validation, prompt, config)
        return train_lora(target, examples, config, out, validate)
    prompts = request_prompts(target.tokenizer, requests, prompt, target.max_positions)
    teacher = _teacher(
        target, requests, prompts, prompt, batching, cache_dir() / "teacher", hidden=config.method in HEADS
    )
    if config.method in HEADS:
        return _train_heads(target, teacher, config, out)
    return train_lora(target, _GreedyExamples(prompts, teacher), config, out)


def _reranker_validation(target: Target, requests: list, prompt: PromptConfig, config: FinetuneConfig):
    """``validate(model)`` for a reranker in training: on held-out training requests, how often the first
    slot picks the claim's own passage among 4 other claims' (``own_first``, chance 0.2: the first sign
    of reading), the content figures of ``difficulty.content_figures`` (shuffle consistency, letter KT),
    and the greedy ranking's KT to the teacher and to the request (BM25) order."""
    from rsd_rerank.difficulty import content_figures, greedy_ranker, letter_kt

    scores = teacher_scores(target.tokenizer, requests, prompt, config.teacher)
    teacher = [order_by_score([s[str(c.docid)] for c in r.candidates]) for r, s in zip(requests, scores, strict=True)]
    coarse = [
        (request_prompt(target.tokenizer, r, prompt, target.max_positions), own)
        for r, own in own_among_foreign(requests, k=5, seed=config.seed)
    ]

    def own_first(model) -> float:
        """How often the first slot's most probable identifier is the claim's own passage (chance 0.2)."""
        hits = 0
        for p, own in coarse:
            ids = torch.tensor([list(p.token_ids)], device=model.device)
            logits = model(input_ids=ids, logits_to_keep=1).logits[0, -1]
            hits += int(int(logits[list(p.layout.first_ids)].argmax()) == own)
        return hits / len(coarse)

    def validate(model) -> dict:
        training = Target(model, target.tokenizer, f"{target.name} (training)")
        figures = content_figures(greedy_ranker(training, prompt), requests)
        kt = lambda a, b: float(kendall_tau(np.asarray([a]), np.asarray([b]))[0])  # noqa: E731
        return {
            "own_first": own_first(model),
            "shuffle_kt": float(np.mean(figures["shuffle_kt"])),
            "letter_kt": figures["letter_kt"],
            "kt_teacher": float(np.mean([kt(g, t) for g, t in zip(figures["greedy"], teacher, strict=True)])),
            "kt_request_order": float(np.mean([kt(g, list(range(len(g)))) for g in figures["greedy"]])),
            "letter_kt_as_given": letter_kt(figures["greedy"]),
        }

    return validate
