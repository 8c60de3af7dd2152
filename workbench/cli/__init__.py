"""The ``workbench`` command line: a parser and one small module per command group (no torch at import,
so that ``workbench --help`` is fast)."""
