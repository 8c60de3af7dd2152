"""Cross-line parity on the embedded model: TransformerBridge (TransformerLens 4) against HookedTransformer (3.x).

Runs under the TransformerLens 4 environment (the second CI job). ``scripts/line_parity.py`` runs
once under the 3.x environment's Python (``$WORKBENCH_TL3_PYTHON``, default ``.venv/bin/python``)
and once under this one, each in its own process; the test compares what they wrote:

* logits of a chat prompt + answer under a steering vector: within 1e-4;
* BiPO, 2 epochs on 16 pairs, same seed: the two lines' vectors have cosine >= 0.999;
* the log-odds curve at 5 multipliers on 16 held-out pairs under the 3.x vector, loaded from its
  files by the bridge (vectors are the same files on both lines): within 1e-3 of the 3.x curve;
  and back: the bridge's vector scored by 3.x within 1e-3 of the bridge's own curve.

Without a 3.x Python the test skips, unless ``WORKBENCH_REQUIRE_PARITY=1`` (CI), where it fails.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from workbench.core.vector import SteeringVector

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "line_parity.py"


def _run(python: str, out: Path, *extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([python, str(SCRIPT), str(out), *extra], env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, f"{python} {SCRIPT.name} failed:\n{proc.stderr[-3000:]}"
    return json.loads((out / "parity.json").read_text())


def tl3_python() -> str:
    """The 3.x line's Python (``$WORKBENCH_TL3_PYTHON``); skips without one, fails under ``WORKBENCH_REQUIRE_PARITY=1``."""
    python = os.environ.get("WORKBENCH_TL3_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
    probe = ("import sys, workbench.core.backend as b; sys.exit(0 if b.LINE == 3 else 1)")
    ok = Path(python).is_file() and subprocess.run(
        [python, "-c", probe], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True).returncode == 0
    if not ok:
        message = f"no TransformerLens 3.x Python at {python} (set WORKBENCH_TL3_PYTHON)"
        if os.environ.get("WORKBENCH_REQUIRE_PARITY") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return python


@pytest.fixture(scope="module")
def both_lines(tmp_path_factory):
    python3 = tl3_python()
    out3, out4 = tmp_path_factory.mktemp("tl3"), tmp_path_factory.mktemp("tl4")
    res3 = _run(python3, out3)
    res4 = _run(sys.executable, out4, "--vector", str(out3 / "bipo"))
    res3["back"] = _run(python3, tmp_path_factory.mktemp("tl3_back"), "--vector", str(out4 / "bipo"),
                        "--given-only")["curve_given"]
    assert (res3["line"], res4["line"]) == (3, 4)
    assert (res3["model"], res4["model"]) == ("HookedTransformer", "TransformerBridge")
    assert res3["remaining_hooks"] == res4["remaining_hooks"] == 0
    return out3, out4, res3, res4


@pytest.mark.tl4
@pytest.mark.embedded
def test_logits_under_a_steering_vector_match(both_lines):
    out3, out4, _, _ = both_lines
    a, b = load_file(str(out3 / "logits.safetensors")), load_file(str(out4 / "logits.safetensors"))
    assert torch.equal(a["tokens"], b["tokens"])
    assert (a["logits"] - b["logits"]).abs().max().item() < 1e-4


@pytest.mark.tl4
@pytest.mark.embedded
def test_bipo_vectors_agree(both_lines):
    out3, out4, _, _ = both_lines
    v3, v4 = SteeringVector.load(out3 / "bipo"), SteeringVector.load(out4 / "bipo")
    assert v3.hook_name == v4.hook_name and v3.model_name == v4.model_name == "SmolLM2-135M-Instruct"
    assert v3.norm > 0.1  # it moved
    assert v3.cosine(v4) >= 0.999


@pytest.mark.tl4
@pytest.mark.embedded
def test_logodds_curve_under_the_3x_vector_matches(both_lines):
    _, _, res3, res4 = both_lines
    c3, given, own = (torch.tensor(r, dtype=torch.float64) for r in (res3["curve"], res4["curve_given"], res4["curve"]))
    assert c3.shape == (5, 16)
    assert (c3[-1] - c3[0]).mean() > 1.0  # the curve is a curve: the vector moves the log-odds
    assert (c3 - given).abs().max().item() < 1e-3
    assert (c3 - own).abs().max().item() < 1e-3


@pytest.mark.tl4
@pytest.mark.embedded
def test_the_bridges_vector_steers_3x_as_it_steers_the_bridge(both_lines):
    _, _, res3, res4 = both_lines
    back, own4 = torch.tensor(res3["back"], dtype=torch.float64), torch.tensor(res4["curve"], dtype=torch.float64)
    assert back.shape == (5, 16) and (back[-1] - back[0]).mean() > 1.0
    assert (back - own4).abs().max().item() < 1e-3
