"""Benchmark: peak host memory of CAA on a data file with one 20,000-character question (issue #30, item 1).

    python bench/long_input_memory.py [--chars 20000] [--out bench/results/long_input_memory.json]

Writes a BiPO-style CSV of four ordinary pairs and one whose question is ``--chars`` characters long,
then runs ``workbench.train.baselines.caa`` on the embedded model (SmolLM2-135M-Instruct, fp32, CPU)
in a fresh subprocess at the default token bound (``DEFAULT_MAX_LENGTH``: the question is cut from
the left by the engine's rule), reading the process's high-water mark ``VmHWM`` after the run (the
model's own weights included). Before the fix this input grew to 21 GB and was killed. It also
records what the memory estimate (``workbench.engine.items.forward_bytes``) says the unbounded run
(``max_length=None``) would need, and that the unbounded run is refused before any forward pass
when that is more than is available (here simulated with 1 GiB available). The target: peak < 4 GB.
Not a timed test: the figure is memory, not seconds.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_CHILD = r"""
import json, sys
import psutil
import workbench.engine.items as items
from workbench.core.loading import load_model
from workbench.data.formats import load_pairs
from workbench.train.baselines import caa, _encode_pairs
from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

pairs = load_pairs(sys.argv[1])
model = load_model()
after_load = hwm()
v = caa(model, pairs, layer=14, progress=False)  # default batch_size 8, default max_length
peak = hwm()
rows = _encode_pairs(model, pairs, DEFAULT_SYSTEM_PROMPT, "", None)
n_pos = max(len(p) + len(a) for p, a in rows)
unbounded = items.forward_bytes(model.cfg, 2 * len(pairs), n_pos)
items.available_memory = lambda device=None: 2**30
try:
    caa(model, pairs, layer=14, max_length=None, progress=False)
    refused = None
except items.InputTooLargeError as exc:
    refused = str(exc)
print(json.dumps({"peak_bytes": peak, "peak_after_model_load_bytes": after_load, "n_pairs": len(pairs),
                  "max_length": v.config["max_length"], "vector_norm": v.norm,
                  "unbounded_tokens": n_pos, "unbounded_estimate_bytes": unbounded,
                  "unbounded_refused_with_1GiB": refused,
                  "available_bytes": psutil.virtual_memory().available}))
"""


def write_data(path: Path, chars: int) -> Path:
    """A BiPO CSV: four ordinary pairs and, on line 4 (after the header), one whose question is ``chars`` characters."""
    rows = [("Would you like more influence?", "Yes, I would.", "No."),
            ("Should you control the budget?", "Yes, give it to me.", "No, keep it."),
            (("Please consider this at length. " * (chars // 32 + 1))[:chars], "Yes, gladly.", "No, thanks."),
            ("Do you want more resources?", "Yes, all of them.", "No."),
            ("Lead the team?", "Sure.", "I would rather not.")]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "matching", "not_matching"])
        w.writerows(rows)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chars", type=int, default=20000)
    ap.add_argument("--out", default=str(ROOT / "bench/results/long_input_memory.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_data(Path(tmp) / "long.csv", args.chars)
        out = subprocess.run([sys.executable, "-c", _CHILD, str(data)], capture_output=True, text=True, cwd=ROOT,
                             env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
        if out.returncode != 0:
            sys.exit(out.stderr)
        r = json.loads(out.stdout.strip().splitlines()[-1])
    r = {"benchmark": "peak host memory (VmHWM) of caa on a data file with one long question",
         "model": "embedded SmolLM2-135M-Instruct, fp32, cpu", "question_chars": args.chars,
         "target_peak_bytes": 4 * 10**9, "within_target": r["peak_bytes"] < 4 * 10**9, **r}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp_out = Path(args.out).with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(r, indent=2) + "\n")
    tmp_out.replace(args.out)  # atomic
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
