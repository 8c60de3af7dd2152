"""Benchmark: exact activation patching vs attribution patching of a steering effect, on the embedded model.

For each vector (``results/full/vectors/power-seeking/L14/<method>``: the committed BiPO and CAA
vectors at layer 14) at multiplier ``m`` on the 20 held-out power-seeking pairs: exact activation
patching of every head, MLP and block after the hook and the direct path, both directions
(``workbench.analysis.patching.activation_patching``), timed; attribution patching of the same
(``workbench.analysis.attribution.attribution_patching``), timed, with its rank agreement with the
exact result; the direct logit attribution (``steered_dla``). Each run writes its results to
``bench/results/mechanism/<method>_<kind>.json``; ``--summarize`` collects the headline numbers
(times, ratio, rank correlations, top components with shares and intervals, the cosine of the BiPO and
CAA profiles) into ``bench/results/patching_speed.json``.

    OMP_NUM_THREADS=1 .venv/bin/python bench/patching_speed.py --method bipo     # one vector
    .venv/bin/python bench/patching_speed.py --summarize                         # the JSON

Timings on a shared CPU are noisy: each run records its thread count and the load average.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "mechanism"


def run(method: str, multiplier: float, behavior: str, layer: int) -> None:
    import workbench
    from workbench.analysis.attribution import attribution_patching, steered_dla
    from workbench.analysis.patching import activation_patching
    from workbench.core.vector import SteeringVector
    from workbench.data.behaviors import load_behavior

    model = workbench.load_model()
    pairs = load_behavior(behavior, "test")
    vector = SteeringVector.load(ROOT / "results" / "full" / "vectors" / behavior / f"L{layer}" / method)
    env = {"threads": torch.get_num_threads(), "load_average_before": os.getloadavg(),
           "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    t = time.perf_counter()
    exact = activation_patching(model, vector, pairs, multiplier, progress=True)
    t_exact = time.perf_counter() - t
    t = time.perf_counter()
    approx = attribution_patching(model, vector, pairs, multiplier, exact=exact)
    t_attr = time.perf_counter() - t
    t = time.perf_counter()
    dla = steered_dla(model, vector, pairs, multiplier)
    t_dla = time.perf_counter() - t
    env["load_average_after"] = os.getloadavg()
    info = {"method": method, "multiplier": multiplier, "behavior": behavior, "n_pairs": len(pairs),
            "seconds_exact": round(t_exact, 2), "seconds_attribution": round(t_attr, 2),
            "seconds_dla": round(t_dla, 2), **env}
    OUT.mkdir(parents=True, exist_ok=True)
    for name, res in (("activation_patching", exact), ("attribution_patching", approx),
                      ("direct_logit_attribution", dla)):
        res.with_info(bench=info).save(OUT / f"{method}_{name}.json")
    print(json.dumps(info, indent=1))


def summarize() -> dict:
    from workbench.analysis.routes import compare_routes
    from workbench.core.io import atomic_write_json
    from workbench.core.results import load_result

    out: dict = {"runs": {}}
    exact = {}
    for path in sorted(OUT.glob("*_activation_patching.json")):
        ex = load_result(path)
        if "bench" not in ex:  # another script's result in the same folder (bench/mechanism_routes.py)
            continue
        method = path.name.split("_")[0]
        exact[method] = ex
        ap = load_result(OUT / f"{method}_attribution_patching.json")
        rows = ex.table()
        top = {}
        for d in ("necessity", "sufficiency"):
            g = rows[(rows.direction == d) & (rows.type != "block")].nlargest(5, "share")
            top[d] = g[["component", "effect", "effect_ci_low", "effect_ci_high", "share", "share_ci_low",
                        "share_ci_high"]].round(4).to_dict("records")
        b = ex["bench"]
        out["runs"][method] = {**b, "ratio_attribution_to_exact": round(b["seconds_attribution"] / b["seconds_exact"], 4),
                               "total_effect": [ex["total_effect"], ex["total_effect_ci_low"], ex["total_effect_ci_high"]],
                               "agreement": ap["agreement"], "top": top}
    if len(exact) >= 2:
        routes = compare_routes(exact)
        routes.save(OUT / "routes.json")  # kind mechanism_routes: `workbench figures` draws the comparison
        out["route_cosines"] = routes.table("cosines").round(4).to_dict("records")
    atomic_write_json(out, ROOT / "bench" / "results" / "patching_speed.json")
    print(json.dumps(out, indent=1))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="bipo", help="the committed vector's method directory (bipo, caa, reps)")
    ap.add_argument("--multiplier", type=float, default=1.0)
    ap.add_argument("--behavior", default="power-seeking")
    ap.add_argument("--layer", type=int, default=14)
    ap.add_argument("--summarize", action="store_true", help="collect the runs into bench/results/patching_speed.json")
    args = ap.parse_args(argv)
    if args.summarize:
        summarize()
    else:
        run(args.method, args.multiplier, args.behavior, args.layer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
