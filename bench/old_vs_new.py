"""Benchmark: this checkout against an older commit, side by side in the same run.

    python bench/old_vs_new.py --old d3af344 [--pairs 32] [--eval-pairs 64] [--threads 1]

Checks the old commit out into a temporary git worktree, then runs ``bench/bipo_speed.py`` (one BiPO
epoch in fp32, and the official-style loop) and ``bench/eval_speed.py`` (a 5-multiplier log-odds curve,
the workbench engine only) for the old tree and this one, alternating, each in its own process with
the same torch thread count. The old tree gets its own model cache (``WORKBENCH_CACHE``) so the two
cache formats never rebuild each other. Writes every run's JSON and a summary with the new/old ratios
to ``bench/results/old_vs_new.json``. Ratios are the result: absolute seconds depend on the machine
and its load (the load average before and after is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(tree: Path, script: str, args: list[str], env: dict[str, str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [sys.executable, str(tree / "bench" / script), *args, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tree, env=env | {"PYTHONPATH": str(tree)}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{tree.name}: {script} failed:\n{proc.stderr[-2000:]}")
    result = json.loads(out.read_text())
    out.unlink()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="the older commit (e.g. the one before the engine rewrite)")
    ap.add_argument("--pairs", type=int, default=32, help="BiPO pairs (one epoch)")
    ap.add_argument("--eval-pairs", type=int, default=64, help="pairs of the log-odds curve")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "bipo" / "power-seeking" / "train.csv")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "old_vs_new.json")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from workbench.core.io import atomic_write_json

    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(args.threads))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), args.old], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            trees = {"old": (old, env | {"WORKBENCH_CACHE": str(Path(tmp) / "old-cache")}), "new": (ROOT, env)}
            runs: dict[str, dict] = {}
            data = ["--data", str(args.data.resolve())]
            for tag, (tree, e) in trees.items():
                runs[f"bipo_{tag}"] = _run(tree, "bipo_speed.py", ["--pairs", str(args.pairs), "--precision", "fp32",
                                                                    "--threads", str(args.threads), *data], e)
                runs[f"eval_{tag}"] = _run(tree, "eval_speed.py", ["--pairs", str(args.eval_pairs), "--engines", "kv",
                                                                    *data], e)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True)
    b_old, b_new = runs["bipo_old"]["runs"][0], runs["bipo_new"]["runs"][0]
    e_old, e_new = runs["eval_old"]["seconds"]["kv"], runs["eval_new"]["seconds"]["kv"]
    summary = {
        "old_commit": args.old, "threads": args.threads, "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "bipo_epoch_seconds": {"old": b_old["workbench_epoch_seconds"], "new": b_new["workbench_epoch_seconds"]},
        "bipo_setup_seconds": {"old": b_old["workbench_setup_seconds"], "new": b_new["workbench_setup_seconds"]},
        "bipo_step_loop_seconds": {"old": b_old["workbench_step_loop_seconds"],
                                   "new": b_new["workbench_step_loop_seconds"]},
        "official_epoch_seconds": {"old": b_old["official_epoch_seconds"], "new": b_new["official_epoch_seconds"]},
        "bipo_final_loss": {"old": b_old["final_loss_workbench"], "new": b_new["final_loss_workbench"]},
        "eval_curve_seconds": {"old": e_old, "new": e_new},
        "eval_mean_logodds": {"old": runs["eval_old"]["mean_logodds"]["kv"], "new": runs["eval_new"]["mean_logodds"]["kv"]},
        "ratio_new_over_old": {"bipo_epoch": b_new["workbench_epoch_seconds"] / b_old["workbench_epoch_seconds"],
                               "bipo_setup": b_new["workbench_setup_seconds"] / b_old["workbench_setup_seconds"],
                               "eval_curve": e_new / e_old},
        "runs": runs,
    }
    atomic_write_json(summary, args.out)
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
