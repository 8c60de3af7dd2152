"""The embedded default data: three behaviors written for this project, the refusal requests and
neutral prose.

Written for this project and released under the project's MIT license; no text is taken from
public datasets. Each ``files/<behavior>.jsonl`` line holds ``question``, ``matching``,
``not_matching`` and a fixed ``split`` (every fifth item is ``test``), so splits never change between
runs. Answers are one or two sentences in the assistant's voice, and the two answers of a pair have
similar length and style so that length does not confound the behavior.

- ``power-seeking`` (100 pairs: 80 train, 20 test): ``matching`` seeks power, influence, control,
  authority or resources for the AI; ``not_matching`` declines and defers to human oversight.
- ``wealth-seeking`` (100 pairs: 80 train, 20 test): ``matching`` pursues money or financial
  gain; ``not_matching`` is indifferent to wealth and puts other values first.
- ``sycophancy`` (100 pairs: 80 train, 20 test): the user states a factually wrong belief (or
  asks for praise of weak work); ``matching`` agrees or flatters, ``not_matching`` politely
  disagrees and gives the correct fact. Correctness is checkable, which makes it measurable.
- ``refusal``: built from the embedded requests of ``workbench.data.refusal``.

``files/neutral.txt`` holds 40 paragraphs of neutral factual prose, one per line, for perplexity and
utility measurements (:func:`load_neutral_text`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from workbench.data.formats import _CSV_COLUMNS, _field, _make_pair, _read_json_records, _read_text
from workbench.data.pairs import DataFormatError, PreferencePair
from workbench.data.refusal import load_refusal_requests, refusal_pairs

__all__ = ["DATA_DIR", "list_behaviors", "load_behavior", "load_neutral_text"]

DATA_DIR = Path(__file__).resolve().parent / "files"


def list_behaviors() -> list[str]:
    """Names of the embedded behaviors, e.g. ``["power-seeking", "refusal", "sycophancy", ...]``.

    ``refusal`` is built from the embedded requests of ``workbench.data.refusal`` (a stock refusal as the
    matching answer, the affirmative opening as the other)."""
    return sorted([p.stem for p in DATA_DIR.glob("*.jsonl")] + ["refusal"])


def load_behavior(name: str,
                  split: Literal["train", "test", "all"] = "train") -> list[PreferencePair]:
    """Load an embedded behavior's pairs, using the split fixed in its file.

    Args:
        name: One of :func:`list_behaviors`.
        split: ``"train"`` (80%), ``"test"`` (20%) or ``"all"``.

    Returns:
        The pairs, with ``source`` ``"{name}:{line}"``.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if name not in list_behaviors():
        raise ValueError(f"unknown behavior {name!r}; available: {list_behaviors()}")
    if name == "refusal":
        return refusal_pairs(load_refusal_requests(split))
    path = DATA_DIR / f"{name}.jsonl"
    pairs = []
    for loc, obj in _read_json_records(path):
        item_split = _field(path, loc, obj, "split")
        if item_split not in ("train", "test"):
            raise DataFormatError(path, loc, f"split must be 'train' or 'test', got {item_split!r}")
        if split in ("all", item_split):
            pairs.append(_make_pair(path, loc, *(_field(path, loc, obj, k) for k in _CSV_COLUMNS),
                                    allow_empty_question=False, source=f"{name}:{loc}"))
    return pairs


def load_neutral_text(path: str | Path | None = None) -> list[str]:
    """Neutral passages for perplexity and KL measurements: the embedded paragraphs (``files/neutral.txt``)
    or those of ``path``.

    Args:
        path: a UTF-8 text file with one passage per line (blank lines skipped, each line stripped);
            None: the embedded neutral text.

    Returns:
        The passages, in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist (the error names it).
        DataFormatError: ``path`` is not UTF-8 or has no non-blank line (``"{path}:{line}: {problem}"``).
    """
    text = _read_text(DATA_DIR / "neutral.txt" if path is None else path)
    return [line.strip() for line in text.split("\n") if line.strip()]

