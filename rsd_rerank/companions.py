"""The paper's trained baselines' companions: prediction heads (Blockwise, Medusa) and rankers fine-tuned
on the target's own rankings (FIRST, RankZephyr); where they live and how they load.

Both are made by ``rsd-rerank finetune`` (``rsd_rerank.training.baselines``) into a directory, by
default ``<cache>/baselines/<target>/<method>`` so that ``compare --methods medusa,first-ft`` finds
them without options. A missing or foreign directory is a ``ValueError`` naming the command that
makes it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import weakref
from pathlib import Path

import torch
from torch import nn

from rsd_rerank.registry import HEADS, RANKER_OF
from rsd_rerank.targets import Target, cache_dir, weights_fingerprint

__all__ = [
    "MEDUSA_TREE",
    "Heads",
    "companion_digest",
    "companion_dir",
    "heads_widths",
    "load_heads",
    "load_ranker",
    "save_heads",
]

MEDUSA_TREE = (3, 3, 3)
"""Medusa's tree under the bonus item: the paper's [1, 3, 3, 3] (1 + 3 + 9 + 27 nodes a pass)."""
MEDUSA_HEADS = len(MEDUSA_TREE)
BLOCKWISE_TOP = 5
"""Blockwise's top-5 selection: the first head's 5 best items, each continued by the other heads' best."""


def heads_widths(method: str, heads: Heads) -> tuple[int, ...]:
    """The draft tree's widths per depth: Medusa's tree, or Blockwise's top-5 chains through every head."""
    return MEDUSA_TREE if method == "medusa" else (BLOCKWISE_TOP,) + (1,) * (heads.count - 1)


class Heads(nn.Module):
    """J prediction heads on the target's final hidden state (Medusa-1, Cai et al. 2024; Blockwise,
    Stern et al. 2018, whose heads we build the same way).

    Head j is a residual block ``h + SiLU(W_j h + b_j)`` whose output goes through the target's frozen
    LM head restricted to the identifiers: at the position where the LM head predicts slot s, head j
    scores the items of slot s + j. Zero-initialised, every head starts as the LM head itself.
    """

    def __init__(self, hidden_size: int, count: int):
        super().__init__()
        self.hidden_size, self.count = hidden_size, count
        self.blocks = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(count))
        for block in self.blocks:
            nn.init.zeros_(block.weight)
            nn.init.zeros_(block.bias)

    def forward(self, hidden: torch.Tensor, unembedding: torch.Tensor) -> torch.Tensor:
        """[..., J, K] item log-probabilities of each head from hidden states [..., H] and the
        identifiers' LM-head rows [..., K, H] (``TargetSession.identifier_unembedding``)."""
        hidden = hidden.to(self.blocks[0].weight.dtype)
        states = torch.stack([hidden + nn.functional.silu(block(hidden)) for block in self.blocks], dim=-2)
        return torch.log_softmax(states @ unembedding.to(states.dtype).transpose(-1, -2), dim=-1)


def companion_dir(target: Target, method: str) -> Path:
    """The default directory of a method's heads or fine-tuned ranker for ``target``."""
    kind = RANKER_OF.get(method, method)
    return cache_dir() / "baselines" / re.sub(r"[^A-Za-z0-9_.-]+", "-", target.name).strip("-") / kind


def companion_digest(path: str | os.PathLike | None, target: Target, method: str) -> str:
    """sha256 over the bytes of every file of a method's heads or ranker (``path``, or the default
    directory): what keys a benchmark's records of it, since a companion made again keeps its folder.

    Raises:
        ValueError: no such directory (the message names the command that makes it).
    """
    directory = Path(path) if path is not None else companion_dir(target, method)
    if not directory.is_dir():
        raise ValueError(
            f"{method} needs a companion at {directory}; none there (make it with {_made_by(target, method)})"
        )
    digest = hashlib.sha256()
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(directory)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def _made_by(target: Target, method: str) -> str:
    kind = RANKER_OF.get(method, method)
    return f"`rsd-rerank finetune --method {kind} --model {target.name.split('(')[0]}`"


def _meta(directory: Path, target: Target, method: str, name: str) -> dict:
    """The companion's metadata, checked: it exists, is of ``method``'s kind and was made on ``target``."""
    kind = RANKER_OF.get(method, method)
    path = directory / name
    if not path.is_file():
        raise ValueError(
            f"{method} needs trained {'heads' if method in HEADS else 'ranker'} at {directory}; "
            f"none there (make them with {_made_by(target, method)}, or pass --ranker DIR)"
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not readable JSON ({err}); make it again with {_made_by(target, method)}") from err
    if meta.get("method") != kind:
        raise ValueError(f"{directory} holds {meta.get('method')!r}, not what {method} needs ({kind!r})")
    if meta.get("base") != weights_fingerprint(target.model):
        raise ValueError(
            f"{directory} was trained on {meta.get('target')!r}, not on this target ({target.name}); "
            f"make it with {_made_by(target, method)}"
        )
    return meta


def _stamp(path: Path) -> int:
    """The file's modification time: a companion made again in the same process is loaded again."""
    return path.stat().st_mtime_ns if path.exists() else 0


_LOADED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per target model, its loaded companions by (loader, folder, modification time, method), at most
``_PER_TARGET`` of them: a run loads a method's heads or ranker once, not once per batch. Keyed weakly
on the model (a companion holds its own copy, never the target's), so the companions go when their
target does."""
_PER_TARGET = 8
"""Enough for every companion of the paper's table at once (2 heads, 2 rankers): a smaller bound would
evict and reload one each claim when a benchmark cycles through them."""


def _loaded(load, directory: Path, stamp: int, target: Target, method: str):
    """``load(directory, stamp, target, method)``, or what it returned before for the same target and key
    (the kind, not the method: ``first-sd`` shares ``first-ft``'s ranker)."""
    held = _LOADED.setdefault(target.model, {})
    key = (load.__name__, directory, stamp, RANKER_OF.get(method, method))
    if key not in held:
        while len(held) >= _PER_TARGET:
            held.pop(next(iter(held)))  # the oldest first
        held[key] = load(directory, stamp, target, method)
    return held[key]


def save_heads(directory: str | os.PathLike, heads: Heads, target: Target, method: str, extra: dict) -> None:
    """Write heads and their metadata into ``directory`` (atomically, each file)."""
    from safetensors.torch import save_file

    from rsd_rerank.files import atomic_write, replacing

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with replacing(directory / "heads.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}, str(tmp))
    meta = {
        "method": method,
        "heads": heads.count,
        "hidden_size": heads.hidden_size,
        "target": target.name,
        "base": weights_fingerprint(target.model),
        **extra,
    }
    atomic_write(directory / "heads.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")


def load_heads(path: str | os.PathLike | None, target: Target, method: str) -> Heads:
    """The ``method`` heads (``blockwise`` or ``medusa``) trained on ``target``, on its device.

    Raises:
        ValueError: no heads there, heads of the other method, or heads trained on another target.
    """
    directory = Path(path) if path is not None else companion_dir(target, method)
    return _loaded(_load_heads, directory.resolve(), _stamp(directory / "heads.json"), target, method)


def _load_heads(directory: Path, stamp: int, target: Target, method: str) -> Heads:
    from safetensors.torch import load_file

    meta = _meta(directory, target, method, "heads.json")
    heads = Heads(meta["hidden_size"], meta["heads"])
    heads.load_state_dict(load_file(str(directory / "heads.safetensors")))
    return heads.to(target.model.device).eval()


def load_ranker(path: str | os.PathLike | None, target: Target, method: str) -> Target:
    """The target fine-tuned for ``method`` (``first-ft``, ``rankzephyr-ft``; ``first-sd`` uses
    ``first-ft``'s): its LoRA adapter merged into a copy of the target's model.

    Raises:
        ValueError: no fine-tuned ranker there, another kind, or one made from another target.
    """
    directory = Path(path) if path is not None else companion_dir(target, method)
    return _loaded(_load_ranker, directory.resolve(), _stamp(directory / "ranker.json"), target, method)


def _load_ranker(directory: Path, stamp: int, target: Target, method: str) -> Target:
    from peft import PeftModel

    meta = _meta(directory, target, method, "ranker.json")
    model = PeftModel.from_pretrained(copy.deepcopy(target.model), str(directory / "adapter"))
    return Target(model.merge_and_unload().eval(), target.tokenizer, f"{target.name}+{meta['method']}")
