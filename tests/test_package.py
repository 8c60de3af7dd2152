"""The public API: every name in ``workbench.__all__`` resolves."""

import workbench


def test_every_export_resolves():
    for name in workbench.__all__:
        assert getattr(workbench, name) is not None, name
    assert workbench.SteeringVector.__module__ == "workbench.vector"
