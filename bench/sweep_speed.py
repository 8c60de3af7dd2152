"""Benchmark: a full-depth mean-difference (CAA) layer sweep, one-pass extractor vs one pass per layer.

The one-pass extractor (``workbench.train.baselines.mean_difference_vectors``) reads every layer's
activations in one forward pass per batch; the per-layer approach calls ``caa`` once per layer, each
call a forward pass up to that layer (``stop_at_layer=L+1``), so it runs ``sum(L+1)`` blocks instead
of ``n_layers`` (15.5x more on 30 layers) and tokenizes the data 30 times. Both must give the same
vectors; the script checks that and writes ``bench/results/sweep_speed.json`` atomically.

    .venv/bin/python bench/sweep_speed.py --pairs 100          # the reported run
    .venv/bin/python bench/sweep_speed.py --pairs 8            # a quick check

Timings on a shared CPU are noisy: the JSON records the thread count and load average.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "bipo" / "power-seeking" / "train.csv"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=100, help="number of pairs (first N of the file)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BiPO-format CSV")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--hook", default="resid_post")
    ap.add_argument("--position", default="answer_mean")
    ap.add_argument("--model", default=None, help="model name or directory (default: embedded)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sweep_speed.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from workbench.train.baselines import caa, mean_difference_vectors
    from workbench.data.formats import load_pairs
    from workbench.core.io import atomic_write_json
    from workbench.core.loading import load_model

    # the official file has rows with an empty question (e.g. line 447); keep them as BiPO did
    pairs = load_pairs(args.data, "bipo-csv", allow_empty_question=True)[: args.pairs]
    model = load_model(args.model)
    layers = list(range(model.cfg.n_layers))
    kw = dict(hook=args.hook, position=args.position, batch_size=args.batch_size, progress=False)
    print(f"{len(pairs)} pairs from {args.data}, {model.cfg.model_name} ({len(layers)} layers), "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()}")

    caa(model, pairs[: min(2, len(pairs))], 0, **kw)  # warm-up (allocator, tokenizer caches)

    t0 = time.perf_counter()
    one = mean_difference_vectors(model, pairs, layers, **kw)
    t_one = time.perf_counter() - t0
    print(f"one pass, {len(layers)} layers:   {t_one:8.2f} s", flush=True)

    t0 = time.perf_counter()
    per = {}
    for layer in layers:
        per[layer] = caa(model, pairs, layer, **kw)
        print(f"  per-layer pass {layer}: cumulative {time.perf_counter() - t0:8.2f} s", flush=True)
    t_per = time.perf_counter() - t0
    print(f"per layer, {len(layers)} passes:  {t_per:8.2f} s")

    max_diff = max(float((one[layer].vector - per[layer].vector).abs().max()) for layer in layers)
    identical = all(torch.equal(one[layer].vector, per[layer].vector) for layer in layers)
    ratio = t_per / t_one
    blocks_ratio = sum(layer + 1 for layer in layers) / len(layers)
    print(f"speed-up {ratio:.2f}x (blocks run: {blocks_ratio:.1f}x fewer); vectors identical: {identical} "
          f"(max abs diff {max_diff:.3g})")

    result = {
        "benchmark": "mean-difference layer sweep: one-pass extractor vs one pass per layer",
        "model": model.cfg.model_name, "n_layers": len(layers), "n_pairs": len(pairs),
        "data": str(args.data), "hook": args.hook, "position": args.position, "batch_size": args.batch_size,
        "seconds_one_pass": round(t_one, 3), "seconds_per_layer": round(t_per, 3), "speedup": round(ratio, 3),
        "blocks_ratio": blocks_ratio, "vectors_identical": identical, "max_abs_diff": max_diff,
        "vector_norms": {str(layer): round(one[layer].norm, 4) for layer in layers},
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()), "machine": platform.machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "note": "shared CPU: timings are noisy while other jobs run",
    }
    atomic_write_json(result, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
