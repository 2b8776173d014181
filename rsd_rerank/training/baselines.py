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

import copy
import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from rsd_rerank.companions import MEDUSA_HEADS, Heads, save_heads
from rsd_rerank.config import bounded, check_ranges
from rsd_rerank.files import atomic_write, replace_folder, replacing
from rsd_rerank.prompt import PromptConfig, request_prompts, shown_passages
from rsd_rerank.registry import FINETUNES, HEADS
from rsd_rerank.runs import BatchConfig, batches
from rsd_rerank.session import TargetSession
from rsd_rerank.targets import Target, cache_dir, weights_fingerprint
from rsd_rerank.training.reranker import shuffled_requests, similarity_rankings

__all__ = ["FINETUNED", "FinetuneConfig", "finetune"]

log = logging.getLogger(__name__)

FINETUNED = (*FINETUNES, "reranker")
"""What ``finetune`` makes: heads for ``blockwise`` / ``medusa``, LoRA rankers for ``first-ft`` / ``rankzephyr-ft``
(on the target's own greedy rankings), and ``reranker``: a LoRA that makes the target a content-driven listwise
reranker (shuffled candidates, wordllama similarity as the teacher; ``training.reranker``)."""


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

    def __post_init__(self):
        check_ranges(self)
        if self.method not in FINETUNED:
            raise ValueError(f"finetune makes {', '.join(FINETUNED)}, not {self.method!r}")


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


def _ranking_loss(first_logits: torch.Tensor, sigma: list[int]) -> torch.Tensor:
    """FIRST's weighted RankNet on the first identifier's logits: for every pair ranked i < j (1-based),
    weight 1/(i + j) on log(1 + exp(s_j − s_i)), normalised by the weights."""
    scores = first_logits[torch.tensor(sigma)]  # in σ_tr's order
    k = len(sigma)
    rank = torch.arange(1, k + 1, dtype=torch.float32)
    upper = torch.triu(torch.ones(k, k, dtype=torch.bool), diagonal=1)
    weight = torch.where(upper, 1.0 / (rank[:, None] + rank[None, :]), torch.zeros(k, k))
    pair = torch.nn.functional.softplus(scores[None, :] - scores[:, None])  # [i, j]: s_j − s_i
    return (weight * pair).sum() / weight.sum()


def _train_lora(
    target: Target, prompts: list, teacher: list[dict[str, torch.Tensor]], config: FinetuneConfig, out: Path
) -> dict:
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    for p in prompts:
        if not p.layout.single_token:
            raise ValueError("fine-tuned first-identifier rankers need single-token identifiers (a letters template)")
    torch.manual_seed(config.seed)  # LoRA's A matrices are drawn here
    model = get_peft_model(copy.deepcopy(target.model).float().train(), _lora_config(target, config))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    checkpoint = out / "checkpoint.pt"
    generator = torch.Generator().manual_seed(config.seed)
    orders = [torch.randperm(len(prompts), generator=generator).tolist() for _ in range(config.epochs)]
    steps = [(e, i) for e, order in enumerate(orders) for i in order]
    done, losses = 0, []
    data = hashlib.sha256(json.dumps([list(p.token_ids) for p in prompts]).encode()).hexdigest()[:16]
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if (state["config"], state["base"], state.get("data")) != (
            asdict(config),
            weights_fingerprint(target.model),
            data,
        ):
            raise ValueError(
                f"{checkpoint} is from another run (settings, target or training queries); "
                "pass --overwrite to restart, or choose another --out"
            )
        set_peft_model_state_dict(model, state["adapter"])
        optimizer.load_state_dict(state["optimizer"])
        done, losses = state["done"], state["losses"]
        log.info("resuming %s at step %d of %d", config.method, done, len(steps))
    device = target.model.device
    bar = tqdm(total=len(steps), initial=done, desc=f"{config.method} LoRA", unit="query")
    for step in range(done, len(steps)):
        _, i = steps[step]
        prompt, sigma = prompts[i], teacher[i]["target"].tolist()
        layout = prompt.layout
        ranking = layout.tokens(sigma)[len(layout.head) :]
        ids = torch.tensor([list(prompt.token_ids) + ranking], device=device)
        n = len(prompt.token_ids)
        # Logits only where the ranking is predicted (the prompt's last token on): the LM head over a
        # whole long prompt would cost more than the model.
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16_autocast):
            logits = model(input_ids=ids, logits_to_keep=len(ranking) + 1).logits[0].float()
        loss = torch.nn.functional.cross_entropy(logits[:-1], ids[0, n:])
        if config.method == "first-ft":
            first = logits[0, torch.tensor(layout.first_ids, device=device)]
            loss = loss + config.rank_weight * _ranking_loss(first.cpu(), sigma)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        bar.update(1)
        if (step + 1) % config.save_every == 0 or step + 1 == len(steps):
            state = {
                "config": asdict(config),
                "base": weights_fingerprint(target.model),
                "data": data,
                "adapter": get_peft_model_state_dict(model),
                "optimizer": optimizer.state_dict(),
                "done": step + 1,
                "losses": losses,
            }
            with replacing(checkpoint) as tmp:
                torch.save(state, tmp)
        if config.snapshot_every and (step + 1) % config.snapshot_every == 0:
            _save_adapter(model, out / "snapshots" / f"step-{step + 1}")
    bar.close()
    _save_adapter(model, out / "adapter")
    meta = {
        "method": config.method,
        "target": target.name,
        "base": weights_fingerprint(target.model),
        "config": asdict(config),
        "queries": len(prompts),
        "loss_first_epoch": sum(losses[: len(prompts)]) / len(prompts),
        "loss_last_epoch": sum(losses[-len(prompts) :]) / len(prompts),
    }
    atomic_write(out / "ranker.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    checkpoint.unlink()
    return meta


def _lora_config(target: Target, config: FinetuneConfig):
    """LoRA of rank r (alpha 2r) on every linear layer of the decoder, or of its top ``lora_layers`` layers."""
    from peft import LoraConfig

    if not config.lora_layers:
        return LoraConfig(
            r=config.lora_rank, lora_alpha=2 * config.lora_rank, target_modules="all-linear", lora_dropout=0.0
        )
    n = target.model.config.get_text_config().num_hidden_layers
    if config.lora_layers > n:
        raise ValueError(f"--lora-layers {config.lora_layers}: {target.name} has {n} decoder layers")
    linear = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, m in target.model.model.layers[0].named_modules()
            if isinstance(m, torch.nn.Linear)
        }
    )
    return LoraConfig(
        r=config.lora_rank,
        lora_alpha=2 * config.lora_rank,
        target_modules=linear,
        layers_to_transform=list(range(n - config.lora_layers, n)),
        lora_dropout=0.0,
    )


def _save_adapter(model, directory: Path) -> None:
    """The LoRA adapter into ``directory``, replaced whole (a folder written beside it, then renamed)."""
    fresh = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(fresh, ignore_errors=True)
    model.save_pretrained(str(fresh))
    replace_folder(fresh, directory)


def finetune(
    target: Target,
    requests: list,
    config: FinetuneConfig,
    out: str | os.PathLike,
    prompt: PromptConfig = PromptConfig(),
    batching: BatchConfig = BatchConfig(),
    resume: bool = False,
    overwrite: bool = False,
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
    summary = _finetune_into(target, requests, config, work, prompt, batching)
    if work != out:
        replace_folder(work, out)
    return summary


def _finetune_into(
    target: Target, requests: list, config: FinetuneConfig, out: Path, prompt: PromptConfig, batching: BatchConfig
) -> dict:
    if config.method == "reranker":
        requests = shuffled_requests(requests, config.seed)
    prompts = request_prompts(target.tokenizer, requests, prompt, target.max_positions)
    if config.method == "reranker":
        shown = [shown_passages(r, p, prompt) for r, p in zip(requests, prompts, strict=True)]
        rankings = similarity_rankings([r.query.text for r in requests], shown)
        return _train_lora(target, prompts, [{"target": sigma} for sigma in rankings], config, out)
    teacher = _teacher(
        target, requests, prompts, prompt, batching, cache_dir() / "teacher", hidden=config.method in HEADS
    )
    if config.method in HEADS:
        return _train_heads(target, teacher, config, out)
    return _train_lora(target, prompts, teacher, config, out)
