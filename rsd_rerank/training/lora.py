"""The LoRA loop of ``finetune``: the fine-tuned rankers (``first-ft``, ``rankzephyr-ft``) and the
reranker recipe (``reranker``), over any ``examples`` that give a prompt and a teacher ranking.

``accumulate`` examples share an Adam step and one right-padded forward; each example's loss is read
at its own ranking's positions, so a step's gradient is the mean of its examples' gradients. A
checkpoint (adapter, optimiser, examples done, losses, learning curve) is written every
``save_every`` examples and at every validation; a killed run resumes to the same adapter.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from rsd_rerank.files import atomic_write, replace_folder, replacing
from rsd_rerank.targets import Target, weights_fingerprint
from rsd_rerank.training.reranker import identifier_positions, listmle_loss

FinetuneConfig = Any
"""``rsd_rerank.training.baselines.FinetuneConfig`` (not imported: baselines imports this module)."""

__all__ = ["train_lora"]

log = logging.getLogger(__name__)


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


CHUNK_TOKENS = 4096
"""Padded tokens of one forward and backward. The lists of an Adam step go through in chunks of at most this
many (at least one list each), their gradients summed: the same step, in memory that a step of eight lists
of 20 candidates fits (in one forward it was killed for memory on 24 GB). Lists of 5 fit in one chunk."""


def _length(example: tuple) -> int:
    prompt, sigma, *_ = example
    return len(prompt.token_ids) + len(prompt.layout.tokens(sigma)) - len(prompt.layout.head)


def chunks(batch: list[tuple], tokens: int = CHUNK_TOKENS) -> list[list[int]]:
    """Consecutive groups of ``batch``'s indices whose padded size (longest × count) stays within ``tokens``;
    a list longer than that is a group of its own."""
    groups: list[list[int]] = []
    for j in range(len(batch)):
        if groups:
            width = max(_length(batch[i]) for i in [*groups[-1], j])
            if width * (len(groups[-1]) + 1) <= tokens:
                groups[-1].append(j)
                continue
        groups.append([j])
    return groups


def _ranking_logits(model, batch: list[tuple], device: torch.device, bf16: bool) -> list[torch.Tensor]:
    """Per example (prompt, σ, …): the logits from the prompt's last position through its ranking
    (``len(ranking) + 1`` rows), from one right-padded forward. The LM head runs on those rows only:
    over whole prompts it would cost more than the model."""
    rows = []
    for prompt, sigma, *_ in batch:
        layout = prompt.layout
        rows.append((list(prompt.token_ids), layout.tokens(sigma)[len(layout.head) :]))
    width = max(len(p) + len(r) for p, r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    for b, (p, r) in enumerate(rows):
        ids[b, : len(p) + len(r)] = torch.tensor(p + r, device=device)
        mask[b, : len(p) + len(r)] = 1
    base = model.get_base_model()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        hidden = base.model(input_ids=ids, attention_mask=mask).last_hidden_state
        picked = [hidden[b, len(p) - 1 : len(p) + len(r)] for b, (p, r) in enumerate(rows)]
        logits = base.lm_head(torch.cat(picked)).float()
    return list(logits.split([len(r) + 1 for _, r in rows]))


def _example_loss(logits: torch.Tensor, prompt, sigma: list[int], scored: int, config: FinetuneConfig):
    layout = prompt.layout
    ranking = torch.tensor(layout.tokens(sigma)[len(layout.head) :], device=logits.device)
    if scored < len(sigma) and layout.single_token:
        # The unscored tail (other claims' passages, in an arbitrary order) teaches the format, not its
        # identifiers: learning them would teach the model to copy the order it was given.
        ranking[identifier_positions(layout, len(sigma))[scored:]] = -100  # cross_entropy's ignore_index
    loss = torch.nn.functional.cross_entropy(logits[:-1], ranking)
    if config.method == "first-ft":
        first = logits[0, torch.tensor(layout.first_ids, device=logits.device)]
        loss = loss + config.rank_weight * _ranking_loss(first.cpu(), sigma)
    elif config.method == "reranker" and config.loss == "listmle":
        loss = listmle_loss(logits, layout, sigma, scored) + config.lm_weight * loss
    return loss


def _crossed(before: int, after: int, every: int) -> bool:
    """Whether ``(before, after]`` holds a multiple of ``every`` (0: never)."""
    return bool(every) and after // every > before // every


def train_lora(target: Target, examples, config: FinetuneConfig, out: Path, validate=None) -> dict:
    """LoRA on ``examples`` (``example(epoch, i)`` → prompt, teacher ranking, slots the ranking loss
    scores), ``config.accumulate`` examples an Adam step, checkpointed every ``save_every`` examples;
    ``validate(model)`` → figures every ``validate_every`` examples, kept in the checkpoint and in
    ``<out>/curve.jsonl``."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    if not examples.single_token():
        raise ValueError("fine-tuned first-identifier rankers need single-token identifiers (a letters template)")
    torch.manual_seed(config.seed)  # LoRA's A matrices are drawn here
    model = get_peft_model(copy.deepcopy(target.model).float().train(), _lora_config(target, config))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    checkpoint = out / "checkpoint.pt"
    generator = torch.Generator().manual_seed(config.seed)
    orders = [torch.randperm(len(examples), generator=generator).tolist() for _ in range(config.epochs)]
    steps = [(e, i) for e, order in enumerate(orders) for i in order]
    done, losses, curve = 0, [], []
    data = examples.fingerprint()
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
        done, losses, curve = state["done"], state["losses"], state.get("curve", [])
        log.info("resuming %s at example %d of %d", config.method, done, len(steps))
    device = target.model.device
    bar = tqdm(total=len(steps), initial=done, desc=f"{config.method} LoRA", unit="example")
    while done < len(steps):
        group = steps[done : done + config.accumulate]
        batch = [examples.example(epoch, i) for epoch, i in group]
        optimizer.zero_grad()
        step_losses = []
        for chunk in chunks(batch):
            part = [batch[j] for j in chunk]
            logits = _ranking_logits(model, part, device, config.bf16_autocast)
            part_losses = [_example_loss(lg, *example, config) for lg, example in zip(logits, part, strict=True)]
            (sum(part_losses) / len(batch)).backward()
            step_losses += part_losses
        optimizer.step()
        losses += [float(loss.detach()) for loss in step_losses]
        before, done = done, done + len(group)
        bar.update(len(group))
        validating = bool(validate) and _crossed(before, done, config.validate_every)
        if validating:
            model.eval()
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16_autocast):
                figures = validate(model.get_base_model())
            model.train()
            recent = losses[-config.validate_every :]
            epoch = group[-1][0]
            curve.append({"step": done, "epoch": epoch + 1, "loss": sum(recent) / len(recent), **figures})
            log.info("validation at example %d: %s", done, json.dumps(curve[-1]))
            bar.write(json.dumps(curve[-1]))
        if validating or _crossed(before, done, config.save_every) or done == len(steps):
            state = {
                "config": asdict(config),
                "base": weights_fingerprint(target.model),
                "data": data,
                "adapter": get_peft_model_state_dict(model),
                "optimizer": optimizer.state_dict(),
                "done": done,
                "losses": losses,
                "curve": curve,
            }
            with replacing(checkpoint) as tmp:
                torch.save(state, tmp)
            if curve:
                atomic_write(out / "curve.jsonl", "".join(json.dumps(row) + "\n" for row in curve))
        if _crossed(before, done, config.snapshot_every):
            _save_adapter(model, out / "snapshots" / f"step-{done}")
    bar.close()
    _save_adapter(model, out / "adapter")
    n = len(examples)
    meta = {
        "method": config.method,
        "target": target.name,
        "base": weights_fingerprint(target.model),
        "config": asdict(config),
        "queries": n,
        "loss_first_epoch": sum(losses[:n]) / n,
        "loss_last_epoch": sum(losses[-n:]) / n,
        "curve": curve,
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
