"""Routes of the embedded power-seeking vectors: methods at equal cost, layers, training checkpoints, multipliers.

The route study of ``workbench.analysis.routes`` on the embedded model (SmolLM2-135M-Instruct), the 20
held-out power-seeking pairs, the committed vectors in ``results/full/vectors/power-seeking``:

* ``matched``: BiPO, CAA and RePS at layer 14, each at its multiplier of the 0.1-nat utility budget
  (``results/full/compare_power-seeking.json``, ``route_multipliers``): exact activation patching of
  every head, MLP and block after the hook (``route_patching``), and attribution patching of each at
  the same multiplier with its rank agreement against the exact result;
* ``multipliers``: BiPO at m = 1, 2, 4, 8: exact patching of the MLPs, blocks and direct path (the heads
  left out to keep it short) against attribution patching: where the gradient approximation holds;
* ``layers``: BiPO at layer 9 against layer 14, m = 1, attribution patching (profiles over the
  components both have, blocks 15-29, plus what blocks 10-14 carry for the layer-9 vector);
* ``checkpoints``: BiPO at layer 14 retrained with the study's settings and a checkpoint directory (one
  vector per epoch: ``workbench.train`` writes them), attribution patching of each epoch's vector at
  m = 1, and the cosine of each epoch's route with the final one; the retrained final vector is
  checked against the committed one.

Each stage writes its results under ``bench/results/mechanism/`` (``routes_<stage>.json``, kind
``mechanism_routes``, which ``workbench figures`` draws, plus the per-vector results) and the headline
numbers into ``bench/results/mechanism_routes.json``, with the thread count and load average.

    .venv/bin/python bench/mechanism_routes.py --stages layers checkpoints multipliers matched
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "results" / "full" / "vectors" / "power-seeking"
OUT = ROOT / "bench" / "results" / "mechanism"
SUMMARY = ROOT / "bench" / "results" / "mechanism_routes.json"
STAGES = ("layers", "checkpoints", "multipliers", "matched")


def _cosines(routes) -> list[dict]:
    return routes.table("cosines").round(4).to_dict("records")


def _agreement(res) -> list[dict]:
    return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in res["agreement"]]


def _totals(res) -> list[float]:
    return [round(res["total_effect"], 3), round(res["total_effect_ci_low"], 3), round(res["total_effect_ci_high"], 3)]


def stage_matched(model, pairs) -> dict:
    from workbench.analysis.attribution import attribution_patching
    from workbench.analysis.routes import route_multipliers, route_patching
    from workbench.core.results import load_result
    from workbench.core.vector import SteeringVector

    ms = route_multipliers(load_result(ROOT / "results" / "full" / "compare_power-seeking.json"), budget=0.1)
    vectors = {m: (SteeringVector.load(VECTORS / "L14" / m), ms[m]) for m in ("bipo", "caa", "reps")}
    t = time.perf_counter()
    routes = route_patching(model, vectors, pairs, progress=True)
    seconds = time.perf_counter() - t
    routes.save(OUT / "routes_matched.json")
    out = {"budget": 0.1, "multipliers": {k: round(m, 4) for k, (_, m) in vectors.items()},
           "seconds_exact": round(seconds, 1), "cosines": _cosines(routes), "methods": {}}
    for label, (v, m) in vectors.items():
        exact = routes["results"][label]
        approx = attribution_patching(model, v, pairs, m, exact=load_result_dict(exact))
        rows = load_result_dict(exact).table()
        mlp = rows[(rows.direction == "necessity") & (rows.type == "mlp")]
        heads = rows[(rows.direction == "necessity") & (rows.type == "head")]
        direct = rows[(rows.direction == "necessity") & (rows.type == "direct")]
        top = rows[(rows.direction == "necessity") & (rows.type != "block")].nlargest(5, "share")
        out["methods"][label] = {
            "multiplier": round(m, 4), "total_effect": _totals(exact),
            "necessity_share_sum": {"mlp": round(float(mlp.share.sum()), 3), "head": round(float(heads.share.sum()), 3),
                                    "direct": round(float(direct.share.sum()), 3)},
            "top_necessity": top[["component", "share", "share_ci_low", "share_ci_high"]].round(3).to_dict("records"),
            "attribution_agreement": _agreement(approx)}
    return out


def load_result_dict(obj):
    """A result kept inside another result's ``results`` field (a plain dict) as a ``Result`` again."""
    from workbench.core.results import from_dict

    return from_dict(dict(obj))


def stage_multipliers(model, pairs) -> dict:
    from workbench.analysis.attribution import attribution_patching
    from workbench.analysis.patching import activation_patching
    from workbench.core.vector import SteeringVector

    v = SteeringVector.load(VECTORS / "L14" / "bipo")
    comps = ("mlp", "block", "direct")
    out = {"components": list(comps), "runs": []}
    for m in (1.0, 2.0, 4.0, 8.0):
        exact = activation_patching(model, v, pairs, m, components=comps)
        approx = attribution_patching(model, v, pairs, m, components=comps, exact=exact)
        exact.save(OUT / f"bipo_m{m:g}_activation_patching.json")
        out["runs"].append({"multiplier": m, "total_effect": _totals(exact), "seconds_exact": exact["seconds"],
                            "seconds_attribution": approx["seconds"], "agreement": _agreement(approx)})
    return out


def stage_layers(model, pairs) -> dict:
    from workbench.analysis.routes import route_patching
    from workbench.core.vector import SteeringVector

    vectors = {f"L{layer}": (SteeringVector.load(VECTORS / f"L{layer:02d}" / "bipo"), 1.0) for layer in (9, 14)}
    routes = route_patching(model, vectors, pairs, estimate="attribution")
    routes.save(OUT / "routes_layers.json")
    rows = routes.table()
    early = rows[(rows.label == "L9") & (rows.direction == "necessity") & (rows.layer <= 14) & (rows.type != "block")]
    return {"estimate": "attribution", "multiplier": 1.0, "cosines": _cosines(routes),
            "total_effect": {k: _totals(load_result_dict(r)) for k, r in routes["results"].items()},
            "L9_share_in_blocks_10_14": {t: round(float(g.share.sum()), 3) for t, g in early.groupby("type")}}


def stage_checkpoints(model, pairs) -> dict:
    import numpy as np

    from workbench.analysis.routes import route_patching
    from workbench.core.vector import SteeringVector
    from workbench.studies.config import StudyConfig
    from workbench.studies.vectors import study_pairs
    from workbench.train.bipo import train_bipo

    config = StudyConfig()
    train, _ = study_pairs("power-seeking", config)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        trained = train_bipo(model, train, config.bipo_config(14), checkpoint_dir=Path(tmp) / "ckpt", progress=False)
        train_seconds = time.perf_counter() - t
        paths = sorted((Path(tmp) / "ckpt" / "vectors").iterdir())
        vectors = {f"epoch {int(p.name.split('_')[1])}": (SteeringVector.load(p), 1.0) for p in paths}
        committed = SteeringVector.load(VECTORS / "L14" / "bipo").vector.float()
        final = trained.vector.vector.float()
        same = float(torch.nn.functional.cosine_similarity(final, committed, dim=0))
        routes = route_patching(model, vectors, pairs, estimate="attribution")
    routes.save(OUT / "routes_checkpoints.json")
    cos = routes.table("cosines")
    last = list(vectors)[-1]
    to_final = cos[((cos.label_b == last) | (cos.label_a == last)) & (cos.components == "all")]
    return {"estimate": "attribution", "multiplier": 1.0, "train_seconds": round(train_seconds, 1),
            "final_vs_committed_cosine": round(same, 6),
            "final_vs_committed_max_abs": float((final - committed).abs().max()),
            "norms": {k: round(float(v.vector.float().norm()), 3) for k, (v, _) in vectors.items()},
            "total_effect": {k: _totals(load_result_dict(r)) for k, r in routes["results"].items()},
            "cosine_to_final": to_final[["direction", "label_a", "label_b", "cosine"]].round(4).to_dict("records"),
            "finite": bool(np.isfinite(cos.cosine).all())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    args = ap.parse_args(argv)
    import workbench
    from workbench.core.io import atomic_write_json
    from workbench.studies.config import StudyConfig
    from workbench.studies.vectors import study_pairs

    model = workbench.load_model()
    _, pairs = study_pairs("power-seeking", StudyConfig())
    OUT.mkdir(parents=True, exist_ok=True)
    summary = json.loads(SUMMARY.read_text()) if SUMMARY.is_file() else {}
    for stage in args.stages:
        env = {"threads": torch.get_num_threads(), "load_average_before": os.getloadavg(),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        t = time.perf_counter()
        out = globals()[f"stage_{stage}"](model, pairs)
        summary[stage] = {**out, **env, "seconds": round(time.perf_counter() - t, 1),
                          "load_average_after": os.getloadavg(), "n_pairs": len(pairs)}
        atomic_write_json(summary, SUMMARY)
        print(json.dumps({stage: summary[stage]}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
