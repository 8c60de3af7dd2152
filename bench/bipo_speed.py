"""Benchmark: one BiPO epoch with workbench's trainer vs an official-style loop (issues #3 and #7).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bipo_speed.py [--pairs 64] [--precision fp32|bf16|both]

On the embedded SmolLM2-135M-Instruct and the first ``--pairs`` pairs of BiPO's public
power-seeking ``train.csv``, it runs one epoch of

(a) ``workbench.train.bipo.train_bipo`` (prefix cache, reference log-probs once, only the blocks after the
    hook, each prompt once for both answers, answer-only unembedding), timed end to end including
    building the cache and the reference log-probs;
(b) an official-style loop, as BiPO's trainer does it: every step a full forward of the steered model
    (a hook adds d*v at every position) on matching + not-matching sequences together, a full
    no-grad forward of the reference model, full-vocabulary ``log_softmax`` and a gather.

Both use the same seed, batches, directions, learning-rate schedule and AdamW, so their losses must
agree (the script reports the largest per-step difference and the cosine of the final vectors).

FLOPs are model FLOPs counted from shapes (multiply-add = 2 FLOPs):

* a token through one block: ``2 * P_block + 4 * n_heads * d_head * ctx`` (weights of the block,
  plus ``QK^T`` and ``AV`` against ``ctx`` keys, ``ctx`` = padded key length of its batch);
* a token through the unembedding: ``2 * d_model * d_vocab``;
* backward: weights are frozen, so only activation gradients are computed: one more time the forward
  FLOPs of every block (and unembedding) that the gradient passes through (not x2 as when weights
  are trained).

Padding tokens are counted (they are computed). Achieved GFLOP/s = model FLOPs / wall seconds of the
step loop; the matmul peak is the best of ``torch.matmul`` at the model's own shapes (tokens x d_model
@ d_model x d_mlp, ...) in the same dtype, measured in the same run. Peak RSS is
``getrusage(RUSAGE_SELF).ru_maxrss`` read after each phase (it only grows: later phases include
earlier ones). Results go to ``bench/results/bipo_speed.json`` (atomic write).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from workbench.train.bipo import BiPOConfig, batch_plan, bipo_loss, draw_directions, lr_factor, train_bipo
from workbench.core.prompts import prompts_and_answers
from workbench.data.formats import load_pairs
from workbench.core.io import atomic_write_json
from workbench.core.loading import load_model
from workbench.engine.conditions import entry
from workbench.engine.items import tokenize_completions
from workbench.engine.packed import MIN_SHARED_ROWS, common_prefix

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "bipo" / "power-seeking" / "train.csv"
RESULTS = Path(__file__).resolve().parent / "results" / "bipo_speed.json"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak(model, dtype: torch.dtype, tokens: int = 1024, reps: int = 20) -> dict[str, float]:
    """Best GFLOP/s of ``torch.matmul`` at the model's shapes."""
    d, m = model.cfg.d_model, model.cfg.d_mlp
    out = {}
    for name, (k, n) in {"d_model x d_model": (d, d), "d_model x d_mlp": (d, m), "d_mlp x d_model": (m, d)}.items():
        a, b = torch.randn(tokens, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        for _ in range(3):
            a @ b
        best = math.inf
        for _ in range(reps):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        out[name] = 2 * tokens * k * n / best / 1e9
    out["peak"] = max(out.values())
    return out


def block_params(model) -> int:
    b = model.blocks[0]
    return sum(p.numel() for n, p in b.named_parameters() if p.ndim >= 2)


def flops_block_tokens(model, tokens: int, ctx: int, n_blocks: int) -> float:
    return n_blocks * tokens * (2 * block_params(model) + 4 * model.cfg.n_heads * model.cfg.d_head * ctx)


def unembed_flops(model, tokens: int) -> float:
    return tokens * 2 * model.cfg.d_model * model.cfg.d_vocab


def token_lengths(model, pairs, config: BiPOConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt tokens ``(n,)`` and answer tokens ``(n, 2)`` of each pair, as the trainer tokenizes them."""
    prompts, answers = prompts_and_answers(model, pairs, config.system_prompt)
    p, a = [], []
    for prompt, (m, o) in zip(prompts, answers):
        b = tokenize_completions(model, [prompt, prompt], [m, o], max_length=config.max_length)
        p.append(int(b.prompt_lengths.min()))
        a.append((b.lengths - b.prompt_lengths).tolist())
    return torch.tensor(p), torch.tensor(a)


def shared_span(model, pairs, config: BiPOConfig) -> int:
    """The prompt tokens every pair starts with (the chat template's system prompt), as the trainer tokenizes them."""
    prompts, answers = prompts_and_answers(model, pairs, config.system_prompt)
    ids = [tokenize_completions(model, [p], [a[0]], max_length=config.max_length) for p, a in zip(prompts, answers)]
    return common_prefix([b.tokens[0, : int(b.prompt_lengths[0])] for b in ids])


def _shared(b: int, p: torch.Tensor, span: int) -> int:
    """The prompt positions a packed batch of ``b`` items computes once (``workbench.engine.packed.shared_prefix``)."""
    s = min(span, int(p.min()) - 1)
    return s if b > 1 and (b - 1) * s >= MIN_SHARED_ROWS else 0


def trainer_flops(model, start_layer: int, p_len: torch.Tensor, a_len: torch.Tensor, plan: list[torch.Tensor],
                  span: int = 0) -> float:
    """Model FLOPs of the fast path's steps (forward + activation backward = 2x forward).

    The blocks run packed (``workbench.engine.packed``): the weights see each batch's real tokens only, the
    ``span`` prompt tokens every item shares once per batch, and attention runs per item over ``N`` slots,
    ``N`` = the batch's longest prompt + both answers (counted without the shared span's saving).
    """
    n_run = model.cfg.n_layers - start_layer
    total = 0.0
    for idx in plan:
        p, a = p_len[idx], a_len[idx]
        tokens = int(p.sum() + a.sum()) - (len(idx) - 1) * _shared(len(idx), p, span)
        slots = int((p + a.sum(1)).max())
        fwd = n_run * (tokens * 2 * block_params(model) + 4 * model.cfg.n_heads * model.cfg.d_head * len(idx) * slots ** 2)
        fwd += unembed_flops(model, int(a.sum()))
        total += 2 * fwd
    return total


def setup_flops(model, p_len: torch.Tensor, a_len: torch.Tensor, span: int = 0, batch_size: int = 8) -> float:
    """Model FLOPs of the setup pass: every prompt once and both its answers through every block, unembedded;
    the shared ``span`` once per length-sorted batch of ``batch_size`` (``PrefixCache.build``'s)."""
    n = model.cfg.n_layers
    total = sum(flops_block_tokens(model, int(p), int(p), n) + flops_block_tokens(model, int(a.sum()), int(p + a.max()), n)
                + unembed_flops(model, int(a.sum())) for p, a in zip(p_len, a_len))
    order = torch.argsort(p_len + a_len.amax(1), stable=True)  # Items.lengths: prompt + longest answer
    for s in range(0, len(order), batch_size):
        p = p_len[order[s: s + batch_size]]
        total -= flops_block_tokens(model, (len(p) - 1) * _shared(len(p), p, span), int(p.max()), n)
    return total


def official_flops(model, lengths: list[int], layer: int) -> float:
    """Model FLOPs of one official-style step on a padded batch of sequences of ``lengths``."""
    n, t = len(lengths), max(lengths)
    full = flops_block_tokens(model, n * t, t, model.cfg.n_layers) + unembed_flops(model, n * t)
    backward = flops_block_tokens(model, n * t, t, model.cfg.n_layers - layer - 1) + unembed_flops(model, n * t)
    return 2 * full + backward  # steered forward + reference forward + backward from the hook on


def official_epoch(model, runner, pairs, config: BiPOConfig, lengths: torch.Tensor) -> dict:
    """The official-style loop: full steered and reference forwards, full-vocab log_softmax."""
    prompts, answers = prompts_and_answers(model, pairs, config.system_prompt)
    site_hook = config.hook_name
    gen = torch.Generator().manual_seed(config.seed)
    v = torch.zeros(model.cfg.d_model, requires_grad=True)
    opt = torch.optim.AdamW([v], lr=config.lr, weight_decay=config.weight_decay)
    plan = batch_plan(len(pairs), config, gen, lengths)
    total = len(plan) * config.epochs
    losses, flops = [], 0.0

    def logps(tokens, am, ans_mask, hooks):
        with runner.hooks(fwd_hooks=hooks):
            logits = runner(tokens, attention_mask=am)  # (2b, T, V)
        lp = logits.float().log_softmax(-1)[:, :-1].gather(2, tokens[:, 1:, None]).squeeze(2)  # (2b, T-1)
        return (lp * ans_mask[:, 1:]).sum(1)

    t0 = time.perf_counter()
    for step, idx in enumerate(plan):
        opt.param_groups[0]["lr"] = config.lr * lr_factor(step, total, config.warmup_steps)
        d = draw_directions(config, len(idx), gen)
        ps = [prompts[i] for i in idx.tolist()]
        batch = tokenize_completions(model, ps + ps, [answers[i][0] for i in idx.tolist()] +
                                     [answers[i][1] for i in idx.tolist()], max_length=config.max_length)
        tokens, am, mask = batch.tokens, batch.attention_mask, batch.answer_mask.float()
        delta = (d[0] * v) if config.direction == "batch" else (d.repeat(2)[:, None, None] * v)
        add = lambda act, hook: act + delta.to(act.dtype)  # noqa: E731
        lp = logps(tokens, am, mask, [(site_hook, add)])
        with torch.no_grad():
            ref = logps(tokens, am, mask, [])
        b = len(idx)
        loss_vec, _ = bipo_loss(lp[:b], lp[b:], ref[:b], ref[b:], d, config.beta)
        loss = loss_vec.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        flops += official_flops(model, batch.lengths.tolist(), config.layer)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "losses": losses, "vector": v.detach(), "flops": flops}


def run(model, pairs, precision: str, layer: int, batching: str = "random") -> dict:
    config = BiPOConfig(layer=layer, epochs=1, precision=precision, warmup_steps=0, seed=0, batching=batching)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    peak = matmul_peak(model, dtype)
    t0 = time.perf_counter()
    res = train_bipo(model, pairs, config, progress=False)
    fast_seconds = time.perf_counter() - t0
    rss_fast = rss_mb()
    # the plan the trainer used (same generator draws), for the FLOP count and the official loop
    p_len, a_len = token_lengths(model, pairs, config)
    lengths = p_len + a_len.amax(1)
    plan = batch_plan(len(pairs), config, torch.Generator().manual_seed(config.seed), lengths)
    start = entry(model, config.hook_name)[0]
    span = shared_span(model, pairs, config)
    fast_flops = trainer_flops(model, start, p_len, a_len, plan, span)
    step_seconds = res.epochs[-1]["seconds"]
    runner = copy.deepcopy(model).to(torch.bfloat16) if precision == "bf16" else model
    if precision == "bf16":
        runner.cfg.dtype = torch.bfloat16
    off = official_epoch(model, runner, pairs, config, lengths)
    del runner
    rss_off = rss_mb()
    fast_losses = [h["loss"] for h in res.history]
    run_flops = setup_flops(model, p_len, a_len, span) + 5 * fast_flops  # a 5-epoch run: the setup once
    return res.vector, {
        "precision": precision, "batching": batching, "pairs": len(pairs), "steps": len(plan), "layer": layer,
        "workbench_epoch_seconds": fast_seconds, "workbench_step_loop_seconds": step_seconds,
        "workbench_setup_seconds": res.setup_seconds,
        "official_epoch_seconds": off["seconds"], "ratio": off["seconds"] / fast_seconds,
        "ratio_step_loop": off["seconds"] / step_seconds,
        # a 5-epoch run, from the measured parts: the setup pass runs once per run, every epoch of either loop
        # does the same work
        "ratio_5_epochs": 5 * off["seconds"] / (res.setup_seconds + 5 * step_seconds),
        # the whole train_bipo call of a 5-epoch run: also the coherence pass and everything else it does once
        "ratio_5_epochs_end_to_end": 5 * off["seconds"] / (fast_seconds + 4 * step_seconds),
        "workbench_once_seconds": fast_seconds - res.setup_seconds - step_seconds,
        "final_loss_workbench": fast_losses[-1], "final_loss_official": off["losses"][-1],
        "max_abs_loss_difference": max(abs(a - b) for a, b in zip(fast_losses, off["losses"])),
        "vector_cosine": float(torch.nn.functional.cosine_similarity(res.vector.vector, off["vector"], dim=0)),
        "workbench_model_gflop": fast_flops / 1e9, "official_model_gflop": off["flops"] / 1e9,
        "workbench_setup_model_gflop": setup_flops(model, p_len, a_len, span) / 1e9,
        "workbench_setup_gflops_per_s": setup_flops(model, p_len, a_len, span) / res.setup_seconds / 1e9,
        "shared_prompt_tokens": span,
        "workbench_gflops_per_s": fast_flops / step_seconds / 1e9,
        "official_gflops_per_s": off["flops"] / off["seconds"] / 1e9,
        "matmul_gflops_per_s": peak, "workbench_share_of_matmul_peak": fast_flops / step_seconds / 1e9 / peak["peak"],
        "official_share_of_matmul_peak": off["flops"] / off["seconds"] / 1e9 / peak["peak"],
        # the bounds of a 5-epoch run: its FLOP ratio (the ratio at equal FLOP rates) and the ratio if the setup
        # and the step loops ran at the matmul peak against this run's official time
        "flop_ratio_5_epochs": 5 * off["flops"] / run_flops,
        "ratio_5_epochs_at_matmul_peak": 5 * off["seconds"] / (run_flops / 1e9 / peak["peak"]),
        "peak_rss_mb_after_workbench": rss_fast, "peak_rss_mb_after_official": rss_off,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--precision", choices=("fp32", "bf16", "both"), default="both")
    ap.add_argument("--layer", type=int, default=14)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--batching", choices=("random", "bucket"), default="random",
                    help="BiPOConfig.batching; the official-style loop uses the same batches")
    ap.add_argument("--held-out", type=int, default=32, help="pairs after the training ones for the bf16/fp32 check")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_model()
    pairs = load_pairs(args.data, "bipo-csv", allow_empty_question=True)[: args.pairs]
    out = {"model": str(model.cfg.model_name), "data": str(args.data), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "load_average": os.getloadavg(), "peak_rss_mb_after_load": rss_mb(), "runs": []}
    vectors = {}
    for precision in (("fp32", "bf16") if args.precision == "both" else (args.precision,)):
        vectors[precision], r = run(model, pairs, precision, args.layer, args.batching)
        out["runs"].append(r)
        print(f"[{precision}] workbench {r['workbench_epoch_seconds']:.1f} s "
              f"(setup {r['workbench_setup_seconds']:.1f} s), official {r['official_epoch_seconds']:.1f} s, "
              f"ratio {r['ratio']:.2f} (step loops {r['ratio_step_loop']:.2f}, 5 epochs {r['ratio_5_epochs']:.2f}, end to end "
              f"{r['ratio_5_epochs_end_to_end']:.2f}); final loss "
              f"{r['final_loss_workbench']:.5f} vs {r['final_loss_official']:.5f} "
              f"(max diff {r['max_abs_loss_difference']:.2e}, cosine {r['vector_cosine']:.5f}); "
              f"{r['workbench_gflops_per_s']:.1f} GFLOP/s = {100 * r['workbench_share_of_matmul_peak']:.0f}% of "
              f"matmul peak {r['matmul_gflops_per_s']['peak']:.1f}; official {r['official_gflops_per_s']:.1f} "
              f"GFLOP/s; 5 epochs: FLOP ratio {r['flop_ratio_5_epochs']:.2f}, ratio at the matmul peak "
              f"{r['ratio_5_epochs_at_matmul_peak']:.2f}; peak RSS {r['peak_rss_mb_after_workbench']:.0f} / {r['peak_rss_mb_after_official']:.0f} MB")
    if len(vectors) == 2:  # the accuracy of bf16 training: same data, seed and steps as fp32
        from workbench.evaluate.preference import pair_logodds

        held_out = load_pairs(args.data, "bipo-csv", allow_empty_question=True)[args.pairs: args.pairs + args.held_out]
        per = pair_logodds(model, vectors, held_out, [-1.0, 0.0, 1.0], progress=False)  # fp32 evaluation
        curve = per.groupby(["vector", "multiplier"]).logodds.mean().unstack()
        cos = float(torch.nn.functional.cosine_similarity(vectors["fp32"].vector, vectors["bf16"].vector, dim=0))
        out["bf16_vs_fp32"] = {
            "vector_cosine": cos, "norm_fp32": vectors["fp32"].norm, "norm_bf16": vectors["bf16"].norm,
            "held_out_pairs": len(held_out),
            "held_out_logodds": {p: {f"{m:+g}": float(curve.loc[p, m]) for m in curve.columns} for p in vectors},
            "max_abs_logodds_change": float((curve.loc["bf16"] - curve.loc["fp32"]).abs().max())}
        print(f"bf16 vs fp32 vectors: cosine {cos:.5f}; held-out mean log-odds (m=-1/0/+1, {len(held_out)} pairs) "
              + "; ".join(f"{p} " + "/".join(f"{curve.loc[p, m]:+.2f}" for m in curve.columns) for p in vectors))
    out["load_average_end"] = os.getloadavg()
    atomic_write_json(out, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
