"""Range limits of the config dataclasses' integer fields, declared once, beside each field.

A field made with ``bounded(default, minimum)`` is checked by its class's ``__post_init__``
(``check_ranges``) whoever builds the config, and by the CLI at parse time (``minimum_of``), so a bad
``--option`` fails before anything loads, with the same message in both places.
"""

from __future__ import annotations

from dataclasses import field, fields
from typing import Any

__all__ = ["bounded", "check_ranges", "minimum_of"]


def bounded(default: Any, minimum: int) -> Any:
    """A dataclass field defaulting to ``default`` whose value, when not None, must be >= ``minimum``."""
    return field(default=default, metadata={"minimum": minimum})


def minimum_of(cls: type, name: str) -> int | None:
    """The minimum declared for field ``name`` of dataclass ``cls`` (None: unbounded)."""
    return next((f.metadata.get("minimum") for f in fields(cls) if f.name == name), None)


def check_ranges(config: Any) -> None:
    """Raises ValueError naming the option (``--field-name``) of the first field below its minimum."""
    for f in fields(config):
        minimum, value = f.metadata.get("minimum"), getattr(config, f.name)
        if minimum is not None and value is not None and value < minimum:
            raise ValueError(f"--{f.name.replace('_', '-')} must be >= {minimum}, got {value}")
