"""Benchmark: a 5-multiplier log-odds curve, prefix-shared vs a full forward pass per multiplier.

On the embedded SmolLM2-135M-Instruct and the first ``--pairs`` pairs of BiPO's public power-seeking
``train.csv``, with a CAA vector at ``blocks.14.hook_resid_post`` (made from the next 32 pairs), it
times ``workbench.evaluate.preference.pair_logodds`` at multipliers -2 -1 0 1 2 with

* ``naive``: every multiplier a full forward pass under ``steer`` (matching and not-matching rows);
* ``kv``: the scoring engine of ``workbench.engine.scoring`` (prefix and prompt sharing),
  where each prompt also runs once for both of its answers;
* optionally ``kv`` with ``--precision bf16`` (blocks after the vector in a bf16 copy).

Every engine must give the naive log-odds (the script reports the largest difference, also without
pairs longer than ``max_length`` = 256 tokens, whose prompts are truncated) and writes
``bench/results/eval_speed.json`` atomically. For the ``kv`` engines it also reports model GFLOP/s and
the share of the ``torch.matmul`` peak measured in the same run at the model's shapes and precision
(``bench/bipo_speed.py``'s counting: multiply-add = 2 FLOPs; the cache build runs every block once over
each prompt and its two answers, each non-zero multiplier the blocks after the vector; padding is not
counted, so the figure is a lower bound).

    .venv/bin/python bench/eval_speed.py                 # the reported run (200 pairs)
    .venv/bin/python bench/eval_speed.py --pairs 8       # a quick check

Timings on a shared CPU are noisy: the JSON records wall and process CPU seconds, the thread count
and the load average (CPU seconds are the steadier comparison while other jobs run).
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
MULTIPLIERS = [-2.0, -1.0, 0.0, 1.0, 2.0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=200, help="number of pairs (first N of the file)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BiPO-format CSV")
    ap.add_argument("--batch-size", type=int, default=16, help="pairs per forward pass")
    ap.add_argument("--layer", type=int, default=14)
    ap.add_argument("--engines", nargs="+", default=["naive", "kv"], choices=["naive", "kv"],
                    help="kv: workbench.engine.scoring (prefix and prompt sharing); naive: a full forward per multiplier")
    ap.add_argument("--bf16", action="store_true", help="also time the kv engine with precision bf16")
    ap.add_argument("--model", default=None, help="model name or directory (default: embedded)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "eval_speed.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from workbench.train.baselines import caa
    from workbench.data.formats import load_pairs
    from workbench.evaluate.preference import pair_logodds
    from workbench.core.io import atomic_write_json
    from workbench.core.loading import load_model

    # the official file has rows with an empty question; keep them as BiPO did
    all_pairs = load_pairs(args.data, "bipo-csv", allow_empty_question=True)
    pairs = all_pairs[: args.pairs]
    model = load_model(args.model)
    vec = caa(model, all_pairs[args.pairs: args.pairs + 32], args.layer, progress=False)
    print(f"{len(pairs)} pairs from {args.data}, {model.cfg.model_name}, vector {vec!r}; "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()}")
    pair_logodds(model, vec, pairs[:2], [0.0, 1.0], progress=False)  # warm-up

    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    from bipo_speed import flops_block_tokens, matmul_peak, token_lengths, unembed_flops

    from workbench.train.bipo import BiPOConfig

    p_len, a_len = token_lengths(model, pairs, BiPOConfig(layer=args.layer))
    start = args.layer + 1
    n_blocks = model.cfg.n_layers

    def pass_flops(n_run: int) -> float:  # blocks n_run..: prompts once, both answers against them
        f = sum(flops_block_tokens(model, int(p), int(p), n_run) + flops_block_tokens(model, int(a.sum()), int(p + a.max()), n_run)
                for p, a in zip(p_len, a_len))
        return f + unembed_flops(model, int(a_len.sum()))

    # pairs longer than pair_logodds' max_length (256) lose prompt tokens (the same for both answers in every
    # engine); they are counted, and the differences are also reported without them
    p_full, a_full = token_lengths(model, pairs, BiPOConfig(layer=args.layer, max_length=None))
    too_long = ((p_full + a_full.max(1).values) > 256).numpy()
    kv_flops = pass_flops(n_blocks) + sum(1 for m in MULTIPLIERS if m != 0) * pass_flops(n_blocks - start)
    peaks = {}

    runs = [(e, "fp32") for e in args.engines] + ([("kv", "bf16")] if args.bf16 else [])

    def naive_curve(precision: str):  # the reference: one full forward pass per (pair, answer, multiplier)
        from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT, prompts_and_answers
        from workbench.engine.items import tokenize_completions
        from workbench.engine.readout import token_logprobs
        from workbench.engine.steering import steer

        prompts, answers = prompts_and_answers(model, pairs, DEFAULT_SYSTEM_PROMPT)
        rows = []
        for m in MULTIPLIERS:
            with steer(model, vec, m), torch.no_grad():
                for s in range(0, len(pairs), args.batch_size):
                    idx = range(s, min(s + args.batch_size, len(pairs)))
                    b = tokenize_completions(model, [prompts[i] for i in idx for _ in range(2)],
                                             [a for i in idx for a in answers[i]], 256,
                                             [i for i in idx for _ in range(2)])
                    resid = model(b.tokens, attention_mask=b.attention_mask, stop_at_layer=model.cfg.n_layers)
                    r, c = b.answer_mask[:, 1:].nonzero(as_tuple=True)
                    lp = torch.zeros(len(b)).index_add(0, r, token_logprobs(model, resid[r, c], b.tokens[:, 1:][r, c]))
                    lp = lp.view(-1, 2)
                    rows += [{"multiplier": m, "pair": i, "logodds": float(x[0] - x[1])} for i, x in zip(idx, lp)]
        import pandas as pd

        return pd.DataFrame(rows)

    seconds, cpu, curves = {}, {}, {}
    for engine, precision in runs:
        name = engine if precision == "fp32" else f"{engine}_{precision}"
        t0, c0 = time.perf_counter(), time.process_time()
        per = naive_curve(precision) if engine == "naive" else pair_logodds(
            model, vec, pairs, MULTIPLIERS, batch_size=args.batch_size, precision=precision, progress=True)
        seconds[name] = time.perf_counter() - t0
        cpu[name] = time.process_time() - c0
        if engine == "kv":
            peaks[precision] = matmul_peak(model, torch.bfloat16 if precision == "bf16" else torch.float32)["peak"]
        curves[name] = per.sort_values(["multiplier", "pair"]).logodds.to_numpy()
        means = per.groupby("multiplier").logodds.mean()
        print(f"{name:>9}: {seconds[name]:8.1f} s wall, {cpu[name]:8.1f} s CPU   mean log-odds " +
              "  ".join(f"m={m:+g}: {x:+.3f}" for m, x in means.items()))
    result = {
        "benchmark": "5-multiplier log-odds curve: prefix-shared engines vs a full forward pass per multiplier",
        "model": model.cfg.model_name, "n_pairs": len(pairs), "data": str(args.data), "hook_name": vec.hook_name,
        "multipliers": MULTIPLIERS, "batch_size": args.batch_size,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "cpu_seconds": {k: round(v, 3) for k, v in cpu.items()},
        "mean_logodds": {k: {f"{m:g}": float(v.reshape(len(MULTIPLIERS), -1)[i].mean())
                             for i, m in enumerate(MULTIPLIERS)} for k, v in curves.items()},
    }
    kv_runs = {k: p for k, p in (("kv", "fp32"), ("kv_bf16", "bf16")) if k in seconds}
    if kv_runs:
        result["kv_model_gflop"] = round(kv_flops / 1e9, 1)
        result["kv_gflops_per_s"] = {k: round(kv_flops / seconds[k] / 1e9, 1) for k in kv_runs}
        result["matmul_peak_gflops_per_s"] = {p: round(peaks[p], 1) for p in kv_runs.values()}
        result["kv_share_of_matmul_peak"] = {k: round(kv_flops / seconds[k] / 1e9 / peaks[p], 3)
                                             for k, p in kv_runs.items()}
        for k in kv_runs:
            print(f"{k}: {result['kv_gflops_per_s'][k]} GFLOP/s = {100 * result['kv_share_of_matmul_peak'][k]:.0f}% "
                  f"of the matmul peak {result['matmul_peak_gflops_per_s'][kv_runs[k]]}")
    if "naive" in seconds:
        result["speedup_vs_naive"] = {k: round(seconds["naive"] / v, 3) for k, v in seconds.items() if k != "naive"}
        result["cpu_speedup_vs_naive"] = {k: round(cpu["naive"] / v, 3) for k, v in cpu.items() if k != "naive"}
        result["max_abs_diff_vs_naive"] = {k: float(abs(v - curves["naive"]).max()) for k, v in curves.items()
                                           if k != "naive"}
        result["n_pairs_over_max_length"] = int(too_long.sum())
        result["max_abs_diff_vs_naive_within_max_length"] = {
            k: float(abs(v - curves["naive"]).reshape(len(MULTIPLIERS), -1)[:, ~too_long].max())
            for k, v in curves.items() if k != "naive"}
        for k, r in result["speedup_vs_naive"].items():
            print(f"speed-up of {k} over naive: {r:.2f}x wall, {result['cpu_speedup_vs_naive'][k]:.2f}x CPU "
                  f"(max |log-odds diff| "
                  f"{result['max_abs_diff_vs_naive'][k]:.2e}; "
                  f"{result['max_abs_diff_vs_naive_within_max_length'][k]:.2e} without the "
                  f"{result['n_pairs_over_max_length']} pair(s) over 256 tokens)")
    result |= {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
               "load_average": list(os.getloadavg()), "machine": platform.machine(),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(result, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
