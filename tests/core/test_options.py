"""Options that travel together (workbench.core.options): a config dataclass with keyword options on top."""

from __future__ import annotations

import dataclasses

import pytest

from workbench.core.options import with_options


@dataclasses.dataclass(frozen=True)
class Demo:
    a: int = 1
    b: str = "x"

    def __post_init__(self) -> None:
        if self.a < 0:
            raise ValueError(f"a={self.a} must be >= 0")


@dataclasses.dataclass(frozen=True)
class Other:
    a: int = 1


def test_options_apply_to_the_config_or_the_defaults():
    assert with_options(Demo, None, {}, "f") == Demo()
    assert with_options(Demo, None, {"a": 2}, "f") == Demo(a=2, b="x")
    assert with_options(Demo, Demo(a=2), {"b": "y"}, "f") == Demo(a=2, b="y")
    base = Demo(a=3)
    assert with_options(Demo, base, {}, "f") is base  # no options: the config itself
    assert base == Demo(a=3)  # never changed in place


def test_bad_options_are_one_line_errors():
    with pytest.raises(TypeError, match=r"^f\(\) got unknown option\(s\) \['c'\]; options are the fields of Demo: a, b$"):
        with_options(Demo, None, {"c": 1}, "f")
    with pytest.raises(TypeError, match=r"^f\(\) got unknown option\(s\) \['c', 'd'\]"):
        with_options(Demo, Demo(), {"a": 1, "c": 1, "d": 2}, "f")
    with pytest.raises(TypeError, match=r"^f\(\): config must be a Demo, got dict$"):
        with_options(Demo, {"a": 1}, {}, "f")
    with pytest.raises(TypeError, match="config must be a Demo, got Other"):
        with_options(Demo, Other(), {}, "f")
    with pytest.raises(ValueError, match="a=-1"):  # validated as the config is
        with_options(Demo, None, {"a": -1}, "f")
    with pytest.raises(ValueError, match="a=-1"):
        with_options(Demo, Demo(), {"a": -1}, "f")
