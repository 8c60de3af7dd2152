"""Options of an analysis: one config dataclass, and keyword options on top of it.

As SAELens' ``EvalConfig``, the options of an analysis that travel together are one frozen dataclass
(``SweepConfig``, ``MatchedCostConfig``), validated once when it is made; a public function takes
``config=None, **options`` so that a call with keywords (``layer_sweep(..., method="bipo")``) keeps
working: ``configure`` applies the keywords to the config (or to the defaults).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

C = TypeVar("C")


def configure(cls: type[C], config: C | None, options: dict[str, Any], where: str) -> C:
    """``config`` (default: ``cls()``) with ``options`` applied, validated by ``cls``.

    Raises:
        TypeError: ``config`` is not a ``cls``, or an option is not one of its fields (one line,
            naming the valid ones).
    """
    if config is not None and not isinstance(config, cls):
        raise TypeError(f"{where}: config must be a {cls.__name__}, got {type(config).__name__}")
    fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise TypeError(f"{where}() got unknown option(s) {', '.join(unknown)}; valid: {', '.join(fields)}")
    base = config if config is not None else cls()
    return dataclasses.replace(base, **options) if options else base  # type: ignore[type-var]


__all__ = ["configure"]
