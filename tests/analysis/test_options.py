"""Options of an analysis: a config dataclass with keyword options on top."""

from __future__ import annotations

import dataclasses

import pytest

from workbench.analysis.options import configure


@dataclasses.dataclass(frozen=True)
class Demo:
    a: int = 1
    b: str = "x"

    def __post_init__(self) -> None:
        if self.a < 0:
            raise ValueError(f"a={self.a} must be >= 0")


def test_options_apply_to_the_config_or_the_defaults():
    assert configure(Demo, None, {}, "f") == Demo()
    assert configure(Demo, Demo(a=2), {"b": "y"}, "f") == Demo(a=2, b="y")
    base = Demo(a=3)
    assert configure(Demo, base, {}, "f") is base


def test_bad_options_are_one_line_errors():
    with pytest.raises(TypeError, match=r"^f\(\) got unknown option\(s\) c; valid: a, b$"):
        configure(Demo, None, {"c": 1}, "f")
    with pytest.raises(TypeError, match="config must be a Demo, got dict"):
        configure(Demo, {"a": 1}, {}, "f")
    with pytest.raises(ValueError, match="a=-1"):
        configure(Demo, None, {"a": -1}, "f")
