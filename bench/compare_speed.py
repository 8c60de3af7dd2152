"""Benchmark: ``workbench compare`` (``matched_cost``) of this tree against an older commit (issue #29).

    .venv/bin/python bench/compare_speed.py                                  # the target: 3 vectors, 40 pairs,
                                                                             # budgets 0.1 0.2, old/new/old/new
    .venv/bin/python bench/compare_speed.py --pairs 10 --budgets 0.1 --repeats 1   # a smaller run

The older commit (default ``HEAD``: the committed ``matched_cost``, one search after the other, every
cost probe a ``utility_per_text`` call of ``[0, m]``, the effect at every visited multiplier) is
checked out into a temporary git worktree. Each side runs in its own process with ``PYTHONPATH``
at its tree (the process checks that ``workbench`` came from there) and the same torch thread count,
old and new alternating (``--repeats`` rounds). Each process loads the embedded SmolLM2-135M-Instruct,
the vectors (default ``results/full/vectors/power-seeking/L14/{bipo,reps,caa}``), the first
``--pairs`` pairs of the embedded power-seeking test split and the first ``--texts`` neutral passages
(``--text-tokens`` tokens each), as ``workbench compare`` does, then times one ``matched_cost`` call
(model loading excluded) with compare's options (``n_boot`` 1000, seed 0, ``rel_tol`` 0.05,
``max_multiplier`` 64).

Recorded in ``bench/results/compare_speed.json`` (atomic write): seconds of every call and the
speed-up (old / new, per round and of the medians); the load average before and after each call and
of the whole run; the best ``torch.matmul`` GFLOP/s at the model's shapes (``bipo_speed.matmul_peak``)
measured between the calls; every found multiplier old vs new with its cost and the largest relative
difference (the new search must find the old multipliers within ``rel_tol``; the two run the same
search on the same costs, so they should agree exactly); the effects (log-odds shift and its interval)
at the multipliers both measured (the found ones and the slope points) and their largest difference;
the new side's ``work`` (cost probes, engine passes). Timings on a shared CPU are noisy: ratios are
the result.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "results" / "full" / "vectors" / "power-seeking" / "L14"
RESULTS = ROOT / "bench" / "results" / "compare_speed.json"


def _clean(x):
    """JSON-safe: NaN -> None, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def worker(args: argparse.Namespace) -> int:
    """One side: load, time one ``matched_cost`` call, write what the parent compares."""
    import torch

    torch.set_num_threads(args.threads)
    import workbench
    from workbench.analysis.equal_cost import matched_cost
    from workbench.core.loading import load_model
    from workbench.core.vector import SteeringVector
    from workbench.data.behaviors import load_behavior, load_neutral_text

    tree = Path(args.tree).resolve()
    source = Path(workbench.__file__).resolve()
    if tree not in source.parents:
        raise SystemExit(f"workbench was imported from {source}, not from {tree}")
    model = load_model()
    vectors = {Path(d).name: SteeringVector.load(d) for d in args.vector}
    pairs = load_behavior(args.behavior, "test")[: args.pairs]
    texts = load_neutral_text()[: args.texts]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    grid = {} if args.effect_grid is None else {"effect_grid": tuple(args.effect_grid)}  # the new side only
    res = matched_cost(model, vectors, pairs, texts, cost="kl", budgets=args.budgets, max_multiplier=64.0,
                       rel_tol=args.rel_tol, n_boot=1000, seed=0, utility_kw={"max_tokens": args.text_tokens}, **grid)
    seconds = time.perf_counter() - t0

    def records(x):
        return x.to_dict("records") if hasattr(x, "to_dict") else list(x)

    rows = [{k: r.get(k) for k in ("vector", "direction", "budget", "reached", "converged", "multiplier", "cost",
                                   "max_cost_seen", "search_steps", "effect", "effect_ci_low", "effect_ci_high")}
            for r in records(res["rows"])]
    points = [{k: p.get(k) for k in ("vector", "multiplier", "cost", "kl", "effect", "effect_ci_low",
                                     "effect_ci_high")} for p in records(res["points"])]
    out = {"tree": str(tree), "workbench": str(source), "seconds": seconds, "load_average_before": load_before,
           "load_average_after": os.getloadavg(), "threads": torch.get_num_threads(),
           "n_pairs": len(pairs), "n_texts": len(texts), "work": res.get("work"),
           "shapes": {"d_model": model.cfg.d_model, "d_mlp": model.cfg.d_mlp},
           "rows": rows, "points": points, "slopes": records(res["slopes"])}
    Path(args.worker_out).write_text(json.dumps(_clean(out)))
    return 0


def _side(tag: str, tree: Path, args: argparse.Namespace, env: dict[str, str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-out", str(out), "--tree", str(tree),
           "--pairs", str(args.pairs), "--texts", str(args.texts), "--text-tokens", str(args.text_tokens),
           "--threads", str(args.threads), "--behavior", args.behavior, "--rel-tol", str(args.rel_tol),
           "--budgets", *map(str, args.budgets), "--vector", *map(str, args.vector)]
    if tag.startswith("new") and args.effect_grid is not None:
        cmd += ["--effect-grid", *map(str, args.effect_grid)]
    print(f"[{tag}] running ({tree}) ...", flush=True)
    proc = subprocess.run(cmd, cwd=tree, env=env | {"PYTHONPATH": str(tree)}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{tag}: failed:\n{proc.stderr[-3000:]}")
    result = json.loads(out.read_text())
    out.unlink()
    print(f"[{tag}] {result['seconds']:.1f} s (load {result['load_average_before'][0]:.2f} -> "
          f"{result['load_average_after'][0]:.2f})", flush=True)
    return result


def _items_flops(model, items, batch_size: int, first: int, stop: int, shared: bool) -> float:
    """Model FLOPs of one condition over ``items`` through blocks ``first..stop-1`` as the engine batches them
    (``length_batches``), counted as ``bipo_speed`` counts them: the weights on each batch's real tokens, the
    prompt tokens every item of a batch starts with once (``shared``: ``packed.shared_prefix``), attention per
    item over ``N`` slots (``N``: the batch's longest prompt + answers)."""
    import torch
    from bipo_speed import _shared, block_params

    from workbench.engine.forward import length_batches
    from workbench.engine.packed import common_prefix

    total = 0.0
    for idx in length_batches(items, batch_size):
        prompts = [items.prompts[i] for i in idx]
        p = torch.tensor([len(t) for t in prompts])
        a = torch.tensor([sum(len(items.answers[j]) for j in range(int(items.answer_offsets[i]),
                                                                    int(items.answer_offsets[i + 1]))) for i in idx])
        span = _shared(len(idx), p, common_prefix(prompts)) if shared else 0
        tokens = int(p.sum() + a.sum()) - (len(idx) - 1) * span
        slots = int((p + a).max()) - span
        total += (stop - first) * (tokens * 2 * block_params(model)
                                   + 4 * model.cfg.n_heads * model.cfg.d_head * len(idx) * slots * (slots + span))
    return total


def condition_flops(model, vector_dir: Path, behavior: str, n_pairs: int, n_texts: int, text_tokens: int) -> dict:
    """Model FLOPs of the new side's engine conditions (multiply-add = 2 FLOPs): one effect condition (the held-out
    pairs through the blocks after the vector, their answer tokens unembedded), one cost condition (the neutral
    passages through the same blocks, every predicted position unembedded for the KL), and the blocks below the
    vector, which run once per comparison for each (the effect pass and the cost probes' residual streams)."""
    from bipo_speed import unembed_flops

    from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT, prompts_and_answers
    from workbench.core.vector import SteeringVector
    from workbench.data.behaviors import load_behavior, load_neutral_text
    from workbench.engine.conditions import condition_deltas, start_layer
    from workbench.engine.items import tokenize_items
    from workbench.evaluate.utility import NeutralReference

    start = start_layer(model, condition_deltas(((SteeringVector.load(vector_dir), 1.0),)))
    n = model.cfg.n_layers
    pairs = load_behavior(behavior, "test")[:n_pairs]
    prompts, answers = prompts_and_answers(model, pairs, DEFAULT_SYSTEM_PROMPT, append_end_of_turn=True)
    effect_items = tokenize_items(model, prompts, answers, 256)  # preference_logprobs' items and batch size
    cost_items = NeutralReference(model, load_neutral_text()[:n_texts], text_tokens).items  # utility_passes'
    effect_unembed = unembed_flops(model, int(effect_items.answer_lengths().sum()))
    cost_unembed = unembed_flops(model, int(cost_items.answer_lengths().sum()))
    effect = _items_flops(model, effect_items, 16, start, n, True) + effect_unembed
    cost = _items_flops(model, cost_items, 8, start, n, True) + cost_unembed
    below = _items_flops(model, effect_items, 16, 0, start, True) + _items_flops(model, cost_items, 8, 0, start, True)
    return {"start_layer": start, "effect_condition_gflop": effect / 1e9, "effect_unembed_gflop": effect_unembed / 1e9,
            "cost_condition_gflop": cost / 1e9, "cost_unembed_gflop": cost_unembed / 1e9,
            "below_vectors_gflop": below / 1e9, "effect_tokens": sum(len(t) for t in effect_items.prompts)
            + int(effect_items.answer_lengths().sum()), "cost_tokens": sum(len(t) for t in cost_items.prompts)
            + int(cost_items.answer_lengths().sum())}


def unembed_rate(model, rows: tuple[int, ...] = (256, 640), reps: int = 8) -> float:
    """The best GFLOP/s of the unembedding's matmul ``(rows, d_model) @ (d_model, d_vocab)``, its output written
    into a buffer reused across calls (no fresh pages to fault in: the most it can do)."""
    import torch

    d, v = model.cfg.d_model, model.cfg.d_vocab
    w = torch.randn(d, v)
    best = 0.0
    for n in rows:
        h, out = torch.randn(n, d), torch.empty(n, v)
        torch.mm(h, w, out=out)
        for _ in range(reps):
            t = time.perf_counter()
            torch.mm(h, w, out=out)
            best = max(best, 2 * n * d * v / (time.perf_counter() - t) / 1e9)
    return best


def _rel(a, b) -> float | None:
    if a is None or b is None:
        return None if a is None and b is None else math.inf
    return abs(a - b) / max(abs(a), 1e-12)


def _compare(old: dict, new: dict, rel_tol: float) -> dict:
    """Found multipliers old vs new, and the effects at the multipliers both measured."""
    key = lambda r: (r["vector"], int(r["direction"]), float(r["budget"]))  # noqa: E731
    new_rows = {key(r): r for r in new["rows"]}
    found, worst = [], 0.0
    for r in old["rows"]:
        n = new_rows[key(r)]
        rel = _rel(r["multiplier"], n["multiplier"])
        worst = max(worst, rel if rel is not None else 0.0)
        found.append({"vector": r["vector"], "direction": int(r["direction"]), "budget": r["budget"],
                      "multiplier_old": r["multiplier"], "multiplier_new": n["multiplier"], "relative_difference": rel,
                      "cost_old": r["cost"], "cost_new": n["cost"], "steps_old": r["search_steps"],
                      "steps_new": n["search_steps"], "effect_old": r["effect"], "effect_new": n["effect"],
                      "converged_old": r["converged"], "converged_new": n["converged"]})
    new_pts = {(p["vector"], p["multiplier"]): p for p in new["points"]}
    shared, effect_diff, ci_diff, cost_diff = [], 0.0, 0.0, 0.0
    for p in old["points"]:
        q = new_pts.get((p["vector"], p["multiplier"]))
        if q is None:
            continue
        d = abs(p["effect"] - q["effect"])
        ci = max(abs(p["effect_ci_low"] - q["effect_ci_low"]), abs(p["effect_ci_high"] - q["effect_ci_high"]))
        c = abs(p["cost"] - q["cost"])
        effect_diff, ci_diff, cost_diff = max(effect_diff, d), max(ci_diff, ci), max(cost_diff, c)
        shared.append({"vector": p["vector"], "multiplier": p["multiplier"], "cost_old": p["cost"],
                       "cost_new": q["cost"], "effect_old": p["effect"], "effect_new": q["effect"],
                       "ci_old": [p["effect_ci_low"], p["effect_ci_high"]],
                       "ci_new": [q["effect_ci_low"], q["effect_ci_high"]]})
    return {"found": found, "max_relative_multiplier_difference": worst,
            "multipliers_within_rel_tol": worst <= rel_tol, "multipliers_identical": worst == 0.0,
            "effects_at_equal_multipliers": shared, "n_equal_multipliers": len(shared),
            "n_points_old": len(old["points"]), "n_points_new": len(new["points"]),
            "max_abs_effect_difference": effect_diff, "max_abs_ci_difference": ci_diff,
            "max_abs_cost_difference": cost_diff}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default="HEAD", help="the older commit (default HEAD: the committed matched_cost)")
    ap.add_argument("--vector", nargs="+", type=Path,
                    default=[VECTORS / "bipo", VECTORS / "reps", VECTORS / "caa"], help="vector directories")
    ap.add_argument("--behavior", default="power-seeking", help="embedded behavior whose test split is used")
    ap.add_argument("--pairs", type=int, default=40, help="held-out pairs (first N of the test split)")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.2], help="KL budgets")
    ap.add_argument("--rel-tol", type=float, default=0.05, help="the search's tolerance on the budget")
    ap.add_argument("--texts", type=int, default=16, help="neutral passages (compare's default)")
    ap.add_argument("--text-tokens", type=int, default=64, help="tokens per passage (compare's default)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each side")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of old and new")
    ap.add_argument("--first", choices=("old", "new"), default="old", help="which side runs first in each round")
    ap.add_argument("--worktree", type=Path, default=None, help="where to check the old commit out (default: a "
                    "temporary directory); removed afterwards")
    ap.add_argument("--effect-grid", type=float, nargs="*", default=None,
                    help="the new side's MatchedCostConfig.effect_grid (no values: no grid; default: its default)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--tree", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.vector = [v.resolve() for v in args.vector]
    if args.worker_out:
        return worker(args)

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    import torch

    from bipo_speed import matmul_peak
    from workbench.core.io import atomic_write_json

    torch.set_num_threads(args.threads)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS=str(args.threads))
    commit = subprocess.run(["git", "rev-parse", args.old], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    runs: list[dict] = []
    peaks: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = args.worktree or Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), commit], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            for i in range(args.repeats):
                sides = [("old", old_tree), ("new", ROOT)]
                for tag, tree in (sides if args.first == "old" else sides[::-1]):
                    r = _side(f"{tag} {i + 1}", tree, args, env)
                    runs.append({"side": tag, "round": i + 1} | r)
                    shim = type("M", (), {"cfg": type("C", (), r["shapes"])})
                    peaks.append(matmul_peak(shim, torch.float32) | {"after": f"{tag} {i + 1}",
                                                                     "load_average": os.getloadavg()})
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT, capture_output=True)
    old_s = [r["seconds"] for r in runs if r["side"] == "old"]
    new_s = [r["seconds"] for r in runs if r["side"] == "new"]
    first_old = next(r for r in runs if r["side"] == "old")
    first_new = next(r for r in runs if r["side"] == "new")
    check = _compare(first_old, first_new, args.rel_tol)
    from workbench.core.loading import load_model

    work = first_new.get("work") or {}
    model = load_model()
    flops = condition_flops(model, args.vector[0], args.behavior, args.pairs, args.texts, args.text_tokens)
    # the conditions the new side ran: every effect condition (m = 0 included), every cost probe and the
    # unsteered reference pass over the passages
    flops["new_total_gflop"] = (work.get("effect_conditions", 0) * flops["effect_condition_gflop"]
                                + (work.get("cost_probes", 0) + 1) * flops["cost_condition_gflop"]
                                + flops["below_vectors_gflop"])
    peak = max(p["peak"] for p in peaks)
    flops["new_gflops_per_s"] = flops["new_total_gflop"] / statistics.median(new_s)
    flops["new_share_of_matmul_peak"] = flops["new_gflops_per_s"] / peak
    # the most the same work allows: the new side's conditions at the matmul peak, against the old side's time
    flops["speedup_at_matmul_peak"] = statistics.median(old_s) / (flops["new_total_gflop"] / peak)
    # and with the unembedding's matmuls at their own best rate (the rest at the peak, nothing else timed)
    flops["unembed_gflops_per_s"] = unembed_rate(model)
    unembed = (work.get("effect_conditions", 0) * flops["effect_unembed_gflop"]
               + (work.get("cost_probes", 0) + 1) * flops["cost_unembed_gflop"])
    flops["new_unembed_gflop"] = unembed
    flops["speedup_at_matmul_rates"] = statistics.median(old_s) / (
        (flops["new_total_gflop"] - unembed) / peak + unembed / flops["unembed_gflops_per_s"])
    rounds_agree = all(_compare(first_old, r, 0.0)["multipliers_identical"] for r in runs if r["side"] == "old") and \
        all(_compare(first_new, r, 0.0)["multipliers_identical"] for r in runs if r["side"] == "new")
    out = {
        "old_commit": commit, "model": "SmolLM2-135M-Instruct (embedded)", "torch": torch.__version__,
        "threads": args.threads, "cpu_count": os.cpu_count(),
        "config": {"vectors": [str(v.relative_to(ROOT)) if ROOT in v.parents else str(v) for v in args.vector],
                   "behavior": args.behavior, "pairs": args.pairs, "budgets": args.budgets, "cost": "kl",
                   "rel_tol": args.rel_tol, "texts": args.texts, "text_tokens": args.text_tokens, "n_boot": 1000,
                   "repeats": args.repeats, "first": args.first,
                   "effect_grid_new": "default" if args.effect_grid is None else args.effect_grid},
        "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "total_seconds": time.perf_counter() - t_start,
        "seconds": {"old": old_s, "new": new_s},
        "speedup_per_round": [o / n for o, n in zip(old_s, new_s)],
        "speedup_of_medians": statistics.median(old_s) / statistics.median(new_s),
        "matmul_gflops_per_s": peaks, "matmul_peak_gflops_per_s": max(p["peak"] for p in peaks),
        "work_new": first_new.get("work"), "flops_new": flops, "repeated_rounds_identical": rounds_agree,
        "check": check,
        "runs": [{k: v for k, v in r.items() if k not in ("rows", "points", "slopes")} for r in runs],
    }
    atomic_write_json(_clean(out), args.out)
    print(f"old {', '.join(f'{s:.1f}' for s in old_s)} s; new {', '.join(f'{s:.1f}' for s in new_s)} s; speed-up "
          f"{out['speedup_of_medians']:.2f}x (per round {', '.join(f'{x:.2f}' for x in out['speedup_per_round'])}); "
          f"matmul peak {out['matmul_peak_gflops_per_s']:.1f} GFLOP/s; load {load_start[0]:.2f} -> "
          f"{out['load_average_end'][0]:.2f}")
    print(f"new side: {flops['new_total_gflop'] / 1e3:.2f} TFLOP of conditions ({work.get('effect_conditions')} effect x "
          f"{flops['effect_condition_gflop']:.0f} GFLOP, {work.get('cost_probes', 0) + 1} cost x "
          f"{flops['cost_condition_gflop']:.0f} GFLOP, {flops['below_vectors_gflop']:.0f} GFLOP below the vectors) at "
          f"{flops['new_gflops_per_s']:.0f} GFLOP/s ({100 * flops['new_share_of_matmul_peak']:.0f} % of the matmul "
          f"peak); at the peak the speed-up would be {flops['speedup_at_matmul_peak']:.2f}x, with the unembedding "
          f"({unembed / 1e3:.2f} TFLOP) at its best matmul rate ({flops['unembed_gflops_per_s']:.0f} GFLOP/s) "
          f"{flops['speedup_at_matmul_rates']:.2f}x")
    print(f"found multipliers: max relative difference {check['max_relative_multiplier_difference']:.3g} "
          f"(rel_tol {args.rel_tol}); effects at {check['n_equal_multipliers']} equal multipliers: max |diff| "
          f"{check['max_abs_effect_difference']:.3g} (CI {check['max_abs_ci_difference']:.3g}); points "
          f"{check['n_points_old']} old / {check['n_points_new']} new")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
