"""Fitted prompts stored by content, so that a second command over the same requests builds none.

RankLLM's rendering plus the fit to the context costs about 0.3 s a prompt for 300-word passages (809
training prompts: about 4 minutes before any model call), and ``train``, ``finetune``, ``compare`` and
the benchmarks each paid it again. A prompt is a pure function of what the key holds: the template's
text, the tokenizer (vocabulary and chat template), the passage and context budgets, RankLLM's version,
the query and the passages. Entries are one JSON file each, written through a temporary file and a
rename, so processes sharing the folder never read half an entry; two processes building the same
prompt write the same bytes. The folder only grows (about 50 KB a 300-word prompt): delete it at any
time, nothing else refers to it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from importlib import metadata
from pathlib import Path
from typing import Any

from rsd_rerank.files import atomic_write

__all__ = ["FORMAT", "ROOT", "folder", "load", "prompt_key", "store"]

log = logging.getLogger(__name__)

FORMAT = 1
"""Bumped when what an entry holds, or how a prompt is built from the same inputs, changes."""
ROOT: Path | None = None
"""The cache folder; None: ``<cache_dir()>/prompts`` (``$RSD_RERANK_CACHE`` or ``~/.cache/rsd-rerank``)."""


def folder() -> Path:
    """Where entries live (``ROOT``, else ``prompts/`` in the project's cache directory)."""
    if ROOT is not None:
        return ROOT
    from rsd_rerank.targets import cache_dir

    return cache_dir() / "prompts"


def prompt_key(template: dict, tokenizer, settings: dict[str, Any], query: str, docs: list) -> str:
    """sha256 of everything a fitted prompt depends on: the template's content (``template``, as parsed),
    ``settings`` (budgets and identifier scheme), the query and the passages."""
    from rsd_rerank.targets import tokenizer_fingerprint

    parts = {
        "format": FORMAT,
        "rank_llm": metadata.version("rank_llm"),
        "template": template,
        "vocabulary": tokenizer_fingerprint(tokenizer),
        "chat_template": getattr(tokenizer, "chat_template", None),
        "settings": settings,
        "query": query,
        "docs": docs,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def entry_path(key: str) -> Path:
    """The file that holds ``key``'s entry."""
    return folder() / key[:2] / f"{key}.json"


def load(key: str) -> dict | None:
    """The stored entry for ``key``, or None where there is none (or one that cannot be read: it is
    rebuilt and replaced, with a warning naming the file)."""
    path = entry_path(key)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("prompt cache entry %s cannot be read (%s); building the prompt again", path, err)
        return None


def store(key: str, entry: dict) -> None:
    """Write ``entry`` under ``key`` atomically. A cache that cannot be written (a read-only home, a full
    disk) costs only speed: the prompt is returned all the same, and a warning names the folder once."""
    global _unwritable
    try:
        atomic_write(entry_path(key), json.dumps(entry) + "\n")
    except OSError as err:
        if not _unwritable:
            log.warning("prompts are not cached: %s (set RSD_RERANK_CACHE to a writable folder)", err)
        _unwritable = True


_unwritable = False
