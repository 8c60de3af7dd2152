"""Benchmark: the TransformerBridge (TransformerLens 4) against the 3.x fast path, on the embedded model.

Two jobs on SmolLM2-135M-Instruct and the embedded power-seeking pairs, in fp32:

* **BiPO, one epoch** of ``--pairs`` training pairs (batch 4, layer 14 ``resid_post``): on 3.x the
  prefix cache (blocks 0-14 once) and then only blocks 15-29 per step, each prompt once for both
  answers; on the bridge a full forward over every prompt + answer row per step (the reference
  log-probs once, also by full forwards).
* **A 5-multiplier log-odds curve** (-2..2) on the next ``--pairs`` pairs under that vector
  (``pair_logodds``): on 3.x the residual cached at layer 15 per batch and the answers run against
  their prompt's keys/values; on the bridge one full forward per condition.

Run it under each environment (one thread each, so that the comparison is fair on a shared CPU):

    OMP_NUM_THREADS=1 .venv/bin/python bench/line_speed.py          # -> bench/results/line_speed_tl3.json
    OMP_NUM_THREADS=1 .venv-tl4/bin/python bench/line_speed.py      # -> bench/results/line_speed_tl4.json

With both files present it also writes ``bench/results/line_speed.json`` with the ratios. Timings
on a shared CPU are noisy: wall and process CPU seconds are recorded (CPU seconds are the steadier
comparison while other jobs run), with the load average.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from workbench.core import backend  # noqa: E402
from workbench.train.bipo import BiPOConfig, train_bipo  # noqa: E402
from workbench.data.behaviors import load_behavior  # noqa: E402
from workbench.evaluate.preference import pair_logodds  # noqa: E402
from workbench.core.io import atomic_write_json  # noqa: E402
from workbench.core.loading import load_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, {"wall_s": round(time.perf_counter() - w, 2), "cpu_s": round(time.process_time() - c, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=32)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_model()
    pairs = load_behavior("power-seeking", "train")
    train, test = pairs[: args.pairs], pairs[args.pairs: 2 * args.pairs]
    res, bipo = _timed(lambda: train_bipo(model, train, BiPOConfig(epochs=1), progress=False))
    bipo["setup_s"] = round(res.setup_seconds, 2)
    _, curve = _timed(lambda: pair_logodds(model, res.vector, test, (-2, -1, 0, 1, 2), progress=False))
    out = {"kind": "line_speed", "schema_version": 1, "line": backend.LINE, "model_class": type(model).__name__,
           "transformer_lens": backend.TL_VERSION, "transformers": importlib.metadata.version("transformers"),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "pairs": args.pairs,
           "date": datetime.datetime.now().isoformat(timespec="seconds"), "loadavg_start": os.getloadavg(),
           "bipo_epoch": bipo, "curve_5_multipliers": curve, "final_loss": res.history[-1]["loss"]}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(out, RESULTS / f"line_speed_tl{backend.LINE}.json")
    print(json.dumps(out, indent=1))
    both = [RESULTS / f"line_speed_tl{line}.json" for line in (3, 4)]
    if all(p.is_file() for p in both):
        r3, r4 = (json.loads(p.read_text()) for p in both)
        ratio = {job: {k: round(r4[job][k] / r3[job][k], 2) for k in ("wall_s", "cpu_s")}
                 for job in ("bipo_epoch", "curve_5_multipliers")}
        summary = {"kind": "line_speed_summary", "schema_version": 1, "pairs": r3["pairs"],
                   "bridge_over_3x": ratio, "tl3": r3, "tl4": r4}
        atomic_write_json(summary, RESULTS / "line_speed.json")
        print("bridge / 3.x:", json.dumps(ratio))


if __name__ == "__main__":
    main()
