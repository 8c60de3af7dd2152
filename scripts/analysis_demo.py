"""One small run of every analysis on the embedded SmolLM2-135M-Instruct; JSON under results/.

    .venv/bin/python scripts/analysis_demo.py                  # the reported run (~30 min on 2 busy cores)
    .venv/bin/python scripts/analysis_demo.py --train 8 --eval 4 --ft-steps 2 --skip-bipo   # a quick check

Data: the embedded power-seeking and wealth-seeking pairs (``workbench.data.load_behavior``, their
fixed train/test splits), first ``--train`` training and ``--eval`` held-out pairs of each.

1. layer sweep: power-seeking CAA vectors at all 30 layers (one extraction pass), effect at
   m = -1 and +1 on ``--sweep-eval`` held-out pairs -> ``results/analysis_sweep_caa.json``;
2. cosine similarity: power vs wealth per layer, layer x layer (power), BiPO vs CAA at layer 14
   -> ``results/analysis_similarity.json``;
3. logit lens: top tokens of the power vector (direct and exact), steered per-layer view
   -> ``results/analysis_logit_lens.json``;
4. composition: power + wealth CAA vectors at layer 14 -> ``results/analysis_composition.json``;
5. transfer: to a briefly fine-tuned copy exported as a HF directory (under the workbench cache),
   and across layers -> ``results/analysis_transfer.json``.

Timings are wall-clock on a shared CPU and noisy; the JSON records them with the load average.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("sweep", "similarity", "lens", "composition", "transfer")
log = logging.getLogger("analysis_demo")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=32, help="training pairs per behavior")
    ap.add_argument("--eval", type=int, default=16, help="held-out pairs per behavior")
    ap.add_argument("--sweep-eval", type=int, default=8, help="held-out pairs for the 30-layer sweep")
    ap.add_argument("--layer", type=int, default=14, help="layer of the single-layer analyses")
    ap.add_argument("--bipo-epochs", type=int, default=5)
    ap.add_argument("--skip-bipo", action="store_true")
    ap.add_argument("--ft-steps", type=int, default=20)
    ap.add_argument("--ft-lr", type=float, default=1e-5)
    ap.add_argument("--ft-last", type=int, default=4, help="fine-tune the last N blocks")
    ap.add_argument("--ft-dir", type=Path, default=None, help="where to export the fine-tuned model")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    ap.add_argument("--only", nargs="+", choices=STEPS, default=list(STEPS), help="run only these analyses")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared, oversubscribed CPU two threads per process "
                         "measured 5-15x slower than one)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "transformers", "transformer_lens"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import torch

    torch.set_num_threads(args.threads)
    from workbench.baselines import mean_difference_vectors
    from workbench.composition import composition_table
    from workbench.data import load_behavior, load_neutral_text
    from workbench.io import atomic_write_json
    from workbench.logit_lens import final_residuals, lens_to_dict, steered_logit_lens, vector_logit_lens
    from workbench.model import cache_root, load_model
    from workbench.similarity import cosine, layer_cosine_table, method_cosines, table_to_dict
    from workbench.layer_sweep import format_table, layer_sweep, steering_effects
    from workbench.transfer import export_hf_llama, finetune_copy, layer_transfer, transfer_effect, transfer_to_dict

    def env() -> dict:
        return {"threads": torch.get_num_threads(), "loadavg": os.getloadavg()}

    def write(name: str, obj: dict) -> None:
        path = atomic_write_json(obj, args.out / name)
        log.info("wrote %s", path)

    t_all = time.perf_counter()
    model = load_model()
    data = {b: (load_behavior(b, "train")[: args.train], load_behavior(b, "test")[: args.eval])
            for b in ("power-seeking", "wealth-seeking")}
    L = args.layer

    # 1. layer sweep ------------------------------------------------------------------------------
    train, test = data["power-seeking"]
    all_layers = range(model.cfg.n_layers)
    if "sweep" in args.only:
        t0 = time.perf_counter()
        sweep = layer_sweep(model, train, test[: args.sweep_eval], f"0-{model.cfg.n_layers - 1}", method="caa",
                            reference=L)
        log.info("power-seeking CAA sweep in %.0f s\n%s", time.perf_counter() - t0, format_table(sweep.table))
        write("analysis_sweep_caa.json", {**sweep.to_dict(), "behavior": "power-seeking", "env": env(),
                                          "seconds": time.perf_counter() - t0})
        power = sweep.vectors
    else:  # the same vectors: extraction at one layer does not depend on the others
        power = mean_difference_vectors(model, train, all_layers, progress=False)
    wealth = mean_difference_vectors(model, data["wealth-seeking"][0], all_layers, progress=False)

    # 2. similarity --------------------------------------------------------------------------------
    if "similarity" in args.only:
        t0 = time.perf_counter()
        sim = {"kind": "similarity", "env": env()}
        behaviors = method_cosines(power, wealth, names=("power", "wealth"))
        sim["power_vs_wealth_by_layer"] = behaviors.to_dict(orient="records")
        sim["layer_x_layer_power"] = table_to_dict(layer_cosine_table(power), "layer_cosine")
        if not args.skip_bipo:
            from workbench.bipo import BiPOConfig, train_bipo

            tb = time.perf_counter()
            res = train_bipo(model, data["power-seeking"][0], BiPOConfig(layer=L, epochs=args.bipo_epochs),
                             progress=False)
            bipo_v = res.vector
            eff = steering_effects(model, {"bipo": bipo_v, "caa": power[L]}, data["power-seeking"][1])
            sim["bipo_vs_caa"] = {"layer": L, "cosine": cosine(bipo_v, power[L]), "bipo_norm": bipo_v.norm,
                                  "caa_norm": power[L].norm, "bipo_seconds": time.perf_counter() - tb,
                                  "bipo_epochs": args.bipo_epochs, "n_train": len(data["power-seeking"][0]),
                                  "effects": eff.to_dict(orient="records")}
            log.info("BiPO vs CAA at %d: cos %.3f\n%s", L, sim["bipo_vs_caa"]["cosine"], eff.to_string())
        sim["seconds"] = time.perf_counter() - t0
        log.info("power vs wealth cosine by layer\n%s", behaviors.to_string(index=False))
        write("analysis_similarity.json", sim)

    # 3. logit lens --------------------------------------------------------------------------------
    if "lens" in args.only:
        t0 = time.perf_counter()
        v = power[L]
        residuals = final_residuals(model, load_neutral_text()[:8], max_positions=256)
        direct = vector_logit_lens(model, v, k=10)
        exact = vector_logit_lens(model, v, k=10, method="exact", residuals=residuals)
        lens = steered_logit_lens(model, v, data["power-seeking"][1][:8], multiplier=1.0)
        log.info("logit lens of the power vector (direct)\n%s\nexact\n%s\nsteered run\n%s",
                 direct.to_string(index=False), exact.to_string(index=False), lens.to_string(index=False))
        write("analysis_logit_lens.json", {"kind": "logit_lens", "env": env(), "vector": v.to_dict(),
                                           "direct": direct.to_dict(orient="records"),
                                           "exact": exact.to_dict(orient="records"),
                                           "exact_residuals": int(len(residuals)),
                                           "steered": lens_to_dict(lens, "steered_logit_lens", multiplier=1.0),
                                           "seconds": time.perf_counter() - t0})

    # 4. composition -------------------------------------------------------------------------------
    if "composition" in args.only:
        t0 = time.perf_counter()
        comp = composition_table(model, {"power-seeking": power[L], "wealth-seeking": wealth[L]},
                                 {b: test for b, (_, test) in data.items()}, multipliers=1.0)
        log.info("composition at layer %d (m=1 each)\n%s", L, comp.table.to_string(index=False))
        write("analysis_composition.json", comp.to_dict(layer=L, env=env(), seconds=time.perf_counter() - t0,
                                                        cosine=cosine(power[L], wealth[L])))

    # 5. transfer ----------------------------------------------------------------------------------
    if "transfer" in args.only:
        t0 = time.perf_counter()
        v = power[L]
        name = f"{model.cfg.model_name}-ft{args.ft_steps}"
        tuned, losses = finetune_copy(model, load_neutral_text(), steps=args.ft_steps, lr=args.ft_lr,
                                      train_last=args.ft_last, name=name)
        ft_dir = args.ft_dir or cache_root() / "models" / name
        export_hf_llama(tuned, ft_dir, overwrite=True)
        del tuned
        target = load_model(ft_dir)
        changed = sum(float((a - b).norm() ** 2) for a, b in zip(model.parameters(), target.parameters())) ** 0.5
        total = sum(float(p.norm() ** 2) for p in model.parameters()) ** 0.5
        tr = transfer_effect(model, target, v, data["power-seeking"][1], multipliers=(-1.0, 1.0))
        del target
        offsets = (-6, -4, -2, 0, 2, 4, 6)
        lt = layer_transfer(model, v, data["power-seeking"][1], offsets=offsets, multipliers=(-1.0, 1.0))
        log.info("fine-tune losses %s; relative weight change %.2e\ntransfer to %s\n%s\nacross layers\n%s",
                 [round(x, 3) for x in losses], changed / total, ft_dir, tr.to_string(index=False),
                 lt.to_string(index=False))
        write("analysis_transfer.json", {
            "kind": "transfer_set", "env": env(), "seconds": time.perf_counter() - t0,
            "finetune": {"steps": args.ft_steps, "lr": args.ft_lr, "train_last": args.ft_last, "losses": losses,
                         "relative_weight_change": changed / total, "directory": str(ft_dir)},
            "model": transfer_to_dict(tr, source=str(model.cfg.model_name), target=name, vector=v.describe()),
            "layers": transfer_to_dict(lt, kind="layer_transfer", vector=v.describe())})
    log.info("all analyses in %.0f s", time.perf_counter() - t_all)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
