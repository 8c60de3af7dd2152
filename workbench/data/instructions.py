"""System-prompt instructions per behavior: the prompting baseline's text (``files/instructions.json``).

AxBench (Wu et al. 2025, arXiv 2501.17148) finds that simply asking the model beats the steering
methods it tests; the prompting baseline of ``workbench.evaluate.prompting`` asks in two ways, an
instruction in the system turn and k-shot examples. The instructions live here: one per behavior and
direction, ``"elicit"`` (ask for the behavior) and ``"suppress"`` (ask against it), written for this
project for the embedded behaviors (power-seeking, wealth-seeking, sycophancy, refusal) and for
BiPO's public ones (power-seeking, wealth-seeking, hallucination). The file is JSON::

    {"description": "...", "behaviors": {"power-seeking": {"elicit": "...", "suppress": "..."}, ...}}
"""

from __future__ import annotations

import json
from pathlib import Path

DIRECTIONS = ("elicit", "suppress")
INSTRUCTIONS_FILE = Path(__file__).resolve().parent / "files" / "instructions.json"


def load_instructions(path: str | Path | None = None) -> dict[str, dict[str, str]]:
    """``{behavior: {"elicit": text, "suppress": text}}`` of the embedded file or of ``path``.

    Raises:
        ValueError: the file is missing, not JSON, or a behavior lacks a direction or has an empty text
            (one line naming the file).
    """
    path = Path(INSTRUCTIONS_FILE if path is None else path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such instructions file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    behaviors = obj.get("behaviors") if isinstance(obj, dict) else None
    if not isinstance(behaviors, dict) or not behaviors:
        raise ValueError(f"{path}: needs a non-empty 'behaviors' object")
    out: dict[str, dict[str, str]] = {}
    for name, entry in behaviors.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: behaviors[{name!r}] is not an object")
        for d in DIRECTIONS:
            text = entry.get(d)
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{path}: behaviors[{name!r}] lacks a non-empty {d!r} instruction")
        out[str(name)] = {d: entry[d].strip() for d in DIRECTIONS}
    return out


def behavior_instructions(behavior: str, path: str | Path | None = None) -> dict[str, str]:
    """``{"elicit": text, "suppress": text}`` of one behavior (``load_instructions``).

    Raises:
        ValueError: no instructions for ``behavior`` (the message lists those there are).
    """
    table = load_instructions(path)
    if behavior not in table:
        raise ValueError(f"behavior={behavior!r}: no instructions; written for {', '.join(sorted(table))}")
    return dict(table[behavior])


__all__ = ["DIRECTIONS", "INSTRUCTIONS_FILE", "behavior_instructions", "load_instructions"]
