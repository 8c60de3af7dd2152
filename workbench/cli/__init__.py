"""The ``workbench`` command line: a parser, one small module per command group and ``main`` (no torch at
import, so that ``workbench --help`` is fast; each command imports the library when it runs)."""
from workbench.cli.parser import build_parser

__all__ = ["build_parser"]
