"""Options that travel together: one config dataclass, and keyword options on top of it.

As SAELens' ``EvalConfig`` does, the options of a public function that travel together are one
frozen dataclass (``EvalConfig``, ``GenerationConfig``, ``SweepConfig``, ``MatchedCostConfig``, the
study configs), validated once in its ``__post_init__``. The function takes ``config=None,
**options`` so that a call with keywords (``layer_sweep(..., method="bipo")``) keeps working:
``with_options`` applies the keywords to the config (or to the defaults), and a keyword that is not
a field is a ``TypeError`` naming it, as a misspelt keyword argument would be.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

C = TypeVar("C")


def with_options(cls: type[C], config: C | None, options: Mapping[str, Any], where: str) -> C:
    """``config`` (default ``cls()``) with ``options``, names of ``cls``'s fields, replaced.

    Args:
        cls: the config dataclass.
        config: a ``cls`` or None (the defaults).
        options: field values to set (the ``**options`` of the public function).
        where: the public function's name, for the error message.

    Returns:
        ``config`` itself when there are no options, else a new ``cls`` (validated by its
        ``__post_init__``).

    Raises:
        TypeError: ``config`` is not a ``cls``, or an option is not one of its fields (one line,
            naming the unknown options and the valid ones).

    Example:
        >>> cfg = with_options(SweepConfig, None, {"method": "bipo"}, "layer_sweep")
    """
    if config is not None and not isinstance(config, cls):
        article = "an" if cls.__name__[:1] in "AEIOU" else "a"
        raise TypeError(f"{where}(): config must be {article} {cls.__name__}, got {type(config).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = [k for k in options if k not in names]
    if unknown:
        raise TypeError(f"{where}() got unknown option(s) {unknown}; options are the fields of "
                        f"{cls.__name__}: {', '.join(names)}")
    if config is None:
        return cls(**options)
    return dataclasses.replace(config, **options) if options else config  # type: ignore[type-var]


__all__ = ["with_options"]
