"""Preference pairs and every format they are read from; the embedded default data."""

from workbench.data.behaviors import list_behaviors, load_behavior, load_neutral_text
from workbench.data.formats import load_pairs
from workbench.data.pairs import DataFormatError, PreferencePair, as_ab_pairs, train_test_split
from workbench.data.refusal import load_refusal_requests

__all__ = ["DataFormatError", "PreferencePair", "as_ab_pairs", "list_behaviors", "load_behavior", "load_neutral_text", "load_pairs", "load_refusal_requests", "train_test_split"]
