"""GPU smoke test: the embedded model in bf16 on a CUDA device, every stage, nothing off the device.

    HF_HUB_OFFLINE=1 python bench/gpu_smoke.py [--device cuda] [--model DIR] [--layer L] [--out bench/results/gpu_smoke.json]

``--model`` runs the same stages on another model (a local Llama-family directory, e.g. a 7B model in
bf16 on one GPU); the default is the embedded SmolLM2-135M-Instruct at layer 14.

Stages: BiPO (2 epochs, 32 pairs), log-odds, A/B and utility at 3 multipliers, a 5-layer CAA sweep and a
steered generation. A ``TorchDispatchMode`` counts the operations that produce an activation-sized float
tensor on another device than the model's (model computation that left the device). Prints one JSON object with
seconds and peak GPU memory per stage and writes it atomically. Exits 2 without CUDA (no GPU test ever
runs in the default suite).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]


class OffDevice(TorchDispatchMode):
    """Counts operations that produce an activation-sized float tensor off ``device``.

    Token ids, masks and indices are built on the CPU and moved (integer tensors), and small results
    are copied back (``.cpu()`` of per-pair log-probs): neither counts. A float tensor of at least
    ``min_numel`` elements on another device means model computation left the device.
    """

    def __init__(self, device: torch.device, min_numel: int = 4096) -> None:
        super().__init__()
        self.device, self.min_numel, self.count, self.examples = device, min_numel, 0, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else [out]
        for t in outs:
            if (isinstance(t, torch.Tensor) and t.device.type != self.device.type and t.is_floating_point()
                    and t.numel() >= self.min_numel):
                self.count += 1
                if len(self.examples) < 5:
                    self.examples.append(str(func))
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default=None, help="model name or local directory (default: embedded)")
    ap.add_argument("--layer", type=int, default=None, help="steered layer (default: about half the depth)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_smoke.json"))
    args = ap.parse_args()
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device; the GPU smoke test did not run (--device cpu: a dry run)"}))
        return 2
    from workbench.train.bipo import BiPOConfig, train_bipo
    from workbench.data.pairs import as_ab_pairs
    from workbench.data.behaviors import load_behavior
    from workbench.evaluate.suite import evaluate_vectors
    from workbench.core.io import atomic_write_json
    from workbench.analysis.sweep import layer_sweep
    from workbench.core.loading import load_model
    from workbench.core.prompts import format_chat
    from workbench.engine.steering import generate

    stages: dict[str, dict] = {}

    def stage(name, fn):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        watch = OffDevice(dev)
        t0 = time.perf_counter()
        with watch:
            out = fn()
        if cuda:
            torch.cuda.synchronize()
        stages[name] = {"seconds": round(time.perf_counter() - t0, 2),
                        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
                        "off_device_ops": watch.count, "off_device_examples": watch.examples}
        return out

    model = stage("load", lambda: load_model(args.model, device=str(dev), dtype="bf16"))
    layer = args.layer if args.layer is not None else (14 if args.model is None else model.cfg.n_layers // 2)
    train, test = load_behavior("power-seeking", "train")[:32], load_behavior("power-seeking", "test")[:8]
    res = stage("bipo_2_epochs_32_pairs", lambda: train_bipo(
        model, train, BiPOConfig(layer=layer, epochs=2, warmup_steps=2), progress=False))
    v = res.vector
    result = stage("evaluate_logodds_ab_utility_3_mults", lambda: evaluate_vectors(
        model, {"bipo": v}, test, multipliers=[-1.0, 0.0, 1.0], metrics=("logodds", "ab", "utility"),
        ab_pairs=as_ab_pairs(test),
        progress=False))
    stage("caa_sweep_5_layers", lambda: layer_sweep(model, train, test, f"{layer - 4}-{layer}", method="caa"))
    text = stage("steered_generation", lambda: generate(model, format_chat(model, test[0].question), vectors=v,
                                                        multipliers=1.0, max_new_tokens=24))
    report = {"device": torch.cuda.get_device_name(dev) if cuda else "cpu (dry run)", "torch": torch.__version__, "dtype": "bf16",
              "model": str(model.cfg.model_name), "layer": layer,
              "stages": stages, "bipo_final_loss": res.epochs[-1]["loss"], "vector_norm": v.norm,
              "logodds_at_plus1": next((r["mean"] for r in result["metrics"]["logodds"]
                                        if r["multiplier"] == 1.0 and r.get("normalization") == "sum"), None),
              "generation": text if isinstance(text, str) else list(text)[:1],
              "ok": all(s["off_device_ops"] == 0 for s in stages.values())}
    atomic_write_json(report, Path(args.out))
    print(json.dumps(report, indent=1, default=str))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
