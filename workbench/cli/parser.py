"""The ``workbench`` parser: one subcommand per command, bound to its run function with ``set_defaults``. Shared
flags are defined once (``_add_*``); a command's description is its flag function's docstring; defaults the
library owns (multipliers, metrics, BiPO's settings) stay None here: the run configs fill them."""

from __future__ import annotations

import argparse

from workbench.cli import conditional, entanglement, evaluate, files, mechanism, prompting, study, train

PAIR_FORMATS = ("bipo-csv", "ab-json", "ab-text", "truthfulqa-mc1", "truthfulqa-mc2", "jsonl", "advbench", "auto")


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="TransformerLens name, local Hugging Face directory, or 'gemma-3-270m' (the "
                   "packaged Gemma 3 270M; default: the embedded SmolLM2)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto (cuda when available)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="dtype of the whole model's "
                   "weights (default fp32); --precision only sets the blocks after the vector of an fp32 model")
    p.add_argument("--n-devices", type=int, default=1, help="split the blocks over N CUDA devices (default 1)")


def _add_pairs(p: argparse.ArgumentParser, split: str | None, required: bool = False,
               formats: tuple[str, ...] | None = None) -> None:
    """``--data`` or ``--behavior``, ``--format``, ``--split`` (None: no such flag), ``--allow-empty-question``."""
    src = p.add_mutually_exclusive_group(required=required)
    src.add_argument("--data", help="preference-pair file")
    src.add_argument("--behavior", help="embedded behavior instead of --data")
    p.add_argument("--format", default="auto", choices=formats, help="format of --data (advbench: refusal pairs "
                   "from AdvBench's goal,target CSV; default auto)")
    if split is not None:
        p.add_argument("--split", default=split, choices=("train", "test", "all"),
                       help=f"--behavior split (default {split})")
    p.add_argument("--allow-empty-question", action="store_true",
                   help="keep --data rows whose question is empty (a few in BiPO's power/wealth CSVs)")


def _add_holdout(p: argparse.ArgumentParser, part: str) -> None:
    p.add_argument("--test-fraction", type=float, metavar="F", help=f"split --data deterministically and use its "
                   f"{part} part (train and eval with the same F and --split-seed see disjoint pairs)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the --test-fraction split (default 0)")
    p.add_argument("--pairs-per-question", type=int, metavar="K",
                   help="TruthfulQA formats: at most K (true, false) pairs per question (default: all)")


def _add_vectors(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vector", action="append", required=True, metavar="DIR", help="vector directory (repeatable)")


def _add_multipliers(p: argparse.ArgumentParser, default: str = "-2 -1 0 1 2") -> None:
    p.add_argument("--multipliers", nargs="+", help=f"default: {default}")


def _add_system_prompt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--system-prompt", help="system prompt (default: BiPO's)")
    p.add_argument("--no-system-prompt", action="store_true", help="no system turn")


def _add_out(p: argparse.ArgumentParser, help: str, default: str | None = None) -> None:
    p.add_argument("--out", required=default is None, default=default, help=help)


def _add_boot(p: argparse.ArgumentParser, n_boot: str, seed: str) -> None:
    p.add_argument("--n-boot", type=int, default=1000, help=n_boot)
    p.add_argument("--boot-seed", "--seed", dest="seed", type=int, default=0, help=seed)


def _add_executor(p: argparse.ArgumentParser, cells_dir: bool = True) -> None:
    g = p.add_argument_group("cells and cluster (workbench.studies.cells)")
    g.add_argument("--executor", choices=("inline", "debug", "local", "slurm"), default="inline", help="inline "
                   "(default): this process; local: one subprocess per job; slurm: sbatch job arrays; debug: "
                   "submitit's debug executor")
    if cells_dir:
        g.add_argument("--cells-dir", metavar="DIR", help="where each (data, method, layer, seed) cell is written "
                       "and found again after a kill (default: OUT without .json, plus _cells); implied by "
                       "--executor other than inline or several --seeds")
    g.add_argument("--partition", help="Slurm partition")
    g.add_argument("--gpus-per-task", type=int, default=0, help="GPUs per Slurm task (default 0)")
    g.add_argument("--cpus-per-task", type=int, help="CPUs per Slurm task")
    g.add_argument("--time", type=int, default=60, metavar="MINUTES", help="time limit per job (default 60)")
    g.add_argument("--array-parallelism", type=int, default=64, help="Slurm jobs running at once (default 64)")


def _train(p: argparse.ArgumentParser) -> None:
    """Train a BiPO or RePS vector or extract a CAA, ActAdd or PCA vector and save it as a vector directory
    (vector.safetensors + vector.json; BiPO and RePS also write history.json). BiPO options left out take
    workbench.train.BiPOConfig's defaults (RePS: RePSConfig's, the same; --beta and --direction are BiPO's only)."""
    p.add_argument("--method", choices=("bipo", "reps", "caa", "actadd", "pca"), default="bipo")
    _add_pairs(p, "train", formats=PAIR_FORMATS)
    _add_holdout(p, "train")
    p.add_argument("--limit", type=int, help="use the first N pairs")
    p.add_argument("--layer", type=int, help="block index (default: BiPOConfig's, 14)")
    p.add_argument("--hook", help="resid_post (default; resid_pre for actadd), resid_pre, resid_mid, attn_out or "
                   "mlp_out")
    p.add_argument("--epochs", type=int, help="BiPO epochs")
    p.add_argument("--lr", type=float, help="BiPO peak learning rate")
    p.add_argument("--beta", type=float, help="BiPO beta")
    p.add_argument("--batch-size", type=int, help="BiPO pairs per step; caa/pca pairs per pass")
    p.add_argument("--warmup-steps", type=int, help="BiPO linear warm-up steps")
    p.add_argument("--direction", choices=("batch", "example"), help="BiPO: one d per batch or per pair")
    p.add_argument("--precision", choices=("fp32", "bf16"), help="BiPO: dtype of the blocks after the hook")
    p.add_argument("--relayout", action=argparse.BooleanOptionalAction, help="BiPO/RePS on CPU: keep a copy of the "
                   "blocks after the hook laid out for the matmuls (faster; its size is printed; default: where "
                   "memory allows)")
    p.add_argument("--bipo-seed", "--seed", dest="seed", type=int,
                   help="BiPO seed: shuffling, directions, init (--seed is the old name)")
    p.add_argument("--max-length", type=int, metavar="N",
                   help="BiPO: tokens of prompt + answer (prompts are cut from the left; default: BiPOConfig's, 256)")
    p.add_argument("--checkpoint-dir", help="BiPO: checkpoint after every epoch here")
    p.add_argument("--resume", action="store_true", help="BiPO: continue from --checkpoint-dir")
    p.add_argument("--position", default="answer_mean", help="caa/pca position rule (answer_mean, last, ab_letter)")
    p.add_argument("--positive", help="actadd: the positive prompt")
    p.add_argument("--negative", help="actadd: the negative prompt")
    _add_system_prompt(p)
    _add_model(p)
    _add_out(p, "output vector directory")


def _eval(p: argparse.ArgumentParser) -> None:
    """Evaluate one or more steering vectors at several multipliers and write a JSON result (kind 'eval'; schema in
    workbench.evaluate.suite.evaluate_vectors) that 'workbench figures' plots. Metrics: logodds (held-out preference
    log-odds, win rate), ab (CAA A/B probability; A/B data), open (steered generations scored by a likelihood
    judge), truthfulqa (MC1/MC2; --truthfulqa), utility (perplexity and agreement with the unsteered model on neutral
    text), refusal (keyword refusal rate; --refusal-csv). A vector whose d_model or hook does not fit the model is
    an error; one made on a model of another name but the same d_model only warns (an error with --strict-model)."""
    _add_vectors(p)
    _add_pairs(p, "test")
    _add_holdout(p, "test")
    p.add_argument("--metrics", nargs="+", help="comma- or space-separated, from logodds,ab,open,truthfulqa,utility,"
                   "refusal (default logodds,ab,utility; ab is skipped on free-text data only when left at the "
                   "default)")
    p.add_argument("--ab-from-text", action="store_true", help="ab on free-text pairs: ask each question with its "
                   "two answers as choices (A) and (B) (matching answer first for a seeded half; "
                   "workbench.data.formats.as_ab_pairs)")
    _add_multipliers(p)
    p.add_argument("--limit", type=int,
                   help="use at most N pairs, TruthfulQA questions, refusal prompts and neutral passages")
    _add_model(p)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: run the blocks after the vector in a bf16 copy (sums stay fp32)")
    p.add_argument("--batch-size", type=int, default=16, help="items per forward pass (default 16)")
    p.add_argument("--truthfulqa", metavar="PATH", help="TruthfulQA mc_task.json for --metrics truthfulqa")
    p.add_argument("--refusal-csv", metavar="PATH",
                   help="CSV of harmful requests with a 'goal' column (AdvBench format) for --metrics refusal")
    p.add_argument("--neutral", metavar="PATH",
                   help="text file, one passage per line, for utility (default: the embedded neutral text)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="generation length for open/refusal (default 48)")
    p.add_argument("--decodings", nargs="+", default=["greedy", "sampled"], choices=("greedy", "sampled"),
                   help="open-ended decodings (default: greedy sampled; sampled is seeded)")
    _add_system_prompt(p)
    p.add_argument("--no-end-of-turn", action="store_true", help="do not append the end-of-turn token to answers")
    p.add_argument("--strict-model", action="store_true", help="a vector made on another model name is an error")
    _add_boot(p, "bootstrap resamples for intervals (default 1000)",
              "seed of the bootstrap intervals and of sampled generations (--seed is the old name)")
    _add_out(p, "JSON result file (written atomically)")


def _sweep(p: argparse.ArgumentParser) -> None:
    """Make a CAA or BiPO vector at each layer and measure its norm, its cosine to the previous layer's (or a
    reference layer's) vector and its steering effect: the change of the mean held-out log-odds at each multiplier."""
    p.add_argument("--method", choices=("caa", "bipo"), default="caa")
    p.add_argument("--layers", help="e.g. 0-29, 0,5,10 or 10-20:2 (default: every layer)")
    _add_pairs(p, None, required=True)
    p.add_argument("--test-fraction", type=float, metavar="F",
                   help="held-out share of --data (default 0.2; a --behavior has a fixed split)")
    p.add_argument("--split-seed", "--seed", dest="split_seed", type=int, default=0,
                   help="seed of the --data split (--seed is the old name)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="SEED",
                   help="BiPO seeds, one vector per layer and seed (default 0; CAA ignores them)")
    p.add_argument("--limit", type=int, help="use at most N training pairs")
    p.add_argument("--eval-limit", type=int, help="use at most N held-out pairs")
    _add_multipliers(p, "-1 1")
    p.add_argument("--hook", default="resid_post", help="hook point in each block (default resid_post)")
    p.add_argument("--position", default="answer_mean", help="CAA position rule (default answer_mean)")
    p.add_argument("--reference-layer", type=int, help="add cos_ref: cosine to this layer's vector")
    p.add_argument("--epochs", type=int, help="BiPO epochs (default: BiPOConfig's)")
    p.add_argument("--lr", type=float, help="BiPO learning rate (default: BiPOConfig's)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass (default 8)")
    _add_model(p)
    _add_out(p, "JSON file for the table")
    p.add_argument("--save-vectors", metavar="DIR", help="also save each vector to DIR/layer_LL")
    _add_executor(p)


SKIP_EXIT_CODES = ("exit status: 0 every result read; 3 done, but a result was skipped (one warning line each, naming "
                   "the file and why); 2 nothing could be read, or a user error; 1 an internal error")


def _figures(p: argparse.ArgumentParser) -> None:
    """Draw every figure of the result JSON files under --results (PNG + PDF; nothing is recomputed)."""
    p.add_argument("--results", required=True, help="directory searched recursively for result *.json files")
    _add_out(p, "output directory (default: figures/)", "figures")
    p.add_argument("--formats", nargs="+", default=["png", "pdf"], choices=["png", "pdf", "svg"],
                   help="file formats to write (default: png pdf)")


def _convert(p: argparse.ArgumentParser) -> None:
    """Convert steering vectors between workbench vector directories, llama.cpp/repeng GGUF control vectors (.gguf)
    and plain tensor files (.pt/.pth/.bin/.npy/.npz/.safetensors, input only; .pt is read with
    torch.load(weights_only=True)). Several inputs and a .gguf output give one multi-layer control vector.
    blocks.L.hook_resid_post <-> direction.L. Works offline; a model is loaded only with --model."""
    p.add_argument("inputs", nargs="+", metavar="IN", help="vector directory, .gguf, or tensor file")
    p.add_argument("output", metavar="OUT", help="output .gguf file or vector directory")
    p.add_argument("--model", help="load this model (name or local dir; the embedded one is 'SmolLM2-135M-Instruct') "
                   "to check d_model and layers, and record its name")
    p.add_argument("--model-name", help="model name to record, without loading the model")
    p.add_argument("--layer", type=int, help="layer of a tensor file (default: from a 'layer<N>' in its name); for a "
                   ".gguf input, the one layer to take")
    p.add_argument("--hook", default="resid_post",
                   help="hook point of a tensor file: resid_post (default, BiPO/CAA), resid_pre, ... or a full name")
    p.add_argument("--d-model", type=int, help="expected vector length, checked without a model")
    p.add_argument("--key", help="which tensor of a .pt/.npz/.safetensors file holding several")
    p.add_argument("--model-hint", help="controlvector.model_hint written to a .gguf")


def _demo(p: argparse.ArgumentParser) -> None:
    """Train a BiPO vector and extract a CAA vector for one embedded behavior on its train split (embedded
    SmolLM2-135M-Instruct, offline), evaluate both on the held-out test split at multipliers -2..2 (preference
    log-odds; A/B probability with the two answers as choices (A) and (B); perplexity and agreement with the
    unsteered model on neutral text), print the tables and write OUT/vectors/<behavior>/L<layer>/{bipo,caa} (BiPO's
    history.json beside it), OUT/eval.json and OUT/logodds.png (workbench.studies.reproduce.demo)."""
    p.add_argument("--behavior", default="power-seeking", help="embedded behavior (default power-seeking)")
    p.add_argument("--layer", type=int, help="block of the resid_post hook (default: BiPOConfig's, 14)")
    p.add_argument("--epochs", type=int, help="BiPO epochs (default: BiPOConfig's)")
    _add_multipliers(p)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="BiPO training and evaluation precision of the blocks after the vector")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes for smoke tests: 8 train pairs, 4 test pairs, 1 epoch, 4 short passages")
    _add_out(p, "output directory (default runs/demo)", "runs/demo")
    _add_model(p)


def _reproduce(p: argparse.ArgumentParser) -> None:
    _add_out(p, "results directory (default: results/)", "results")
    p.add_argument("--figures", default="figures", help="figures directory (default: figures/)")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 behaviors, 8 pairs, 1 epoch, 3 layers")
    _add_model(p)
    p.add_argument("--behaviors", nargs="+", help="embedded behaviors (default: all)")
    p.add_argument("--layer", type=int, help="layer of the main vectors (default: 14)")
    p.add_argument("--stages", nargs="+", help="subset of: vectors eval compare sweep cosine logit_lens composition "
                   "transfer lora_transfer refusal truthfulness prompting entanglement conditional mechanism figures "
                   "(default: all but prompting, entanglement, conditional and mechanism)")
    p.add_argument("--truthfulqa", metavar="PATH",
                   help="TruthfulQA mc_task.json for the truthfulness stage (without it the stage is skipped)")
    p.add_argument("--force", action="store_true", help="recompute stages whose JSON already exists")
    p.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="BiPO seeds of the study's vectors, made as "
                   "cells and aggregated into seeds.json (default: the study's seed only)")
    _add_executor(p, cells_dir=False)


def _report(p: argparse.ArgumentParser) -> None:
    """Print markdown tables of the result JSON files under --results (nothing is recomputed)."""
    p.add_argument("--results", required=True, help="directory searched recursively for result *.json files")
    p.add_argument("--out", help="also write the markdown to this file (atomically)")
    p.add_argument("--kind", nargs="+", metavar="KIND", help="only results of these kinds (e.g. matched_cost refusal)")


def _refusal(p: argparse.ArgumentParser) -> None:
    _add_vectors(p)
    p.add_argument("--data", help="AdvBench-format CSV (goal,target); default: the embedded requests' held-out split")
    p.add_argument("--format", default="advbench", help=argparse.SUPPRESS)
    _add_holdout(p, "held-out")
    p.add_argument("--limit", type=int, help="use at most this many requests")
    p.add_argument("--templates", default="none,refusal_suppression,persona",
                   help="comma-separated: none and names of workbench.data.refusal.JAILBREAK_TEMPLATES")
    _add_multipliers(p)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--neutral", metavar="PATH", help="neutral text file, one passage per line, for the utility cost "
                   "at every point (default: the embedded neutral text)")
    p.add_argument("--no-utility", action="store_true", help="skip the utility cost (KL, perplexity)")
    p.add_argument("--no-text", action="store_true", help="leave the requests' and the answers' text out of the "
                   "result (each answer keeps its vector, template, multiplier, item and refused flag): for data "
                   "whose text must not be committed or shared, such as AdvBench")
    _add_out(p, "result JSON (kind 'refusal')")
    _add_model(p)


def _compare(p: argparse.ArgumentParser) -> None:
    """For each vector and direction, find the multipliers where the cost on neutral text reaches each budget and
    report the held-out log-odds shift there (kind 'matched_cost'; workbench.analysis.equal_cost)."""
    _add_vectors(p)
    _add_pairs(p, "test", required=True)
    _add_holdout(p, "test")
    p.add_argument("--cost", default="kl", help="kl (default) or perplexity")
    p.add_argument("--budgets", nargs="+", help="cost budgets (default kl: 0.05 0.1 0.2 0.5; perplexity: 0.05 0.1 "
                   "0.25)")
    p.add_argument("--equal-norm", metavar="REF|NUMBER",
                   help="rescale every vector to the norm of vector REF (its label) or to NUMBER")
    p.add_argument("--max-multiplier", type=float, default=64.0, help="bound of the search (default 64)")
    p.add_argument("--rel-tol", type=float, default=0.05, help="relative tolerance on the budget (default 0.05)")
    p.add_argument("--limit", type=int, help="at most N held-out pairs")
    p.add_argument("--neutral", metavar="PATH", help="neutral text file, one passage per line")
    p.add_argument("--texts", type=int, default=16, help="neutral passages of the cost search (default 16)")
    p.add_argument("--text-tokens", type=int, default=64, help="tokens per passage in the cost search (default 64)")
    p.add_argument("--all-points", action="store_true", help="measure the effect at every multiplier the search "
                   "visited within budget (slower; default: the found multipliers, the slope's and a grid)")
    p.add_argument("--effect-grid", nargs="*", type=float, metavar="FRACTION",
                   help="the grid: the effect also at these fractions of the largest multiplier within budget "
                   "(default 0.5; no values: no grid, the best-within-budget column from the found multipliers and "
                   "the slope's only, about a quarter faster)")
    p.add_argument("--prompting", action="store_true", help="also ask instead of steering: the behavior's instruction "
                   "and k = 1, 2, 4, 8 shots from its training pairs, and each vector with the instruction; their "
                   "points join the result and its cost-effect figure (KL cost only)")
    _add_model(p)
    _add_boot(p, "bootstrap resamples (default 1000)", "bootstrap seed (--seed is the old name)")
    _add_out(p, "JSON result file (written atomically)")


def _prompting(p: argparse.ArgumentParser) -> None:
    """Ask for the behavior instead of steering: an instruction in the system turn and k shots from the training
    pairs, each direction; the held-out log-odds shift and the KL cost on neutral text as compare measures them
    (kind 'prompting'; workbench.evaluate.prompting). With --compare, the vectors and prompt + vector rows."""
    _add_pairs(p, "test", required=True)
    _add_holdout(p, "test")
    p.add_argument("--compare", metavar="RESULT.json", help="a `workbench compare` result of the same pairs: add its "
                   "vector rows, and each vector with the instruction at its matched-cost multipliers")
    p.add_argument("--vector", action="append", metavar="DIR", help="vector directory (repeatable; default: the "
                   "--compare result's sources)")
    p.add_argument("--merged", metavar="PATH", help="also write the --compare result with the prompting points "
                   "added (kind 'matched_cost': its cost-effect figure shows them)")
    p.add_argument("--instructions-for", metavar="NAME", help="whose instructions (default: --behavior, or the "
                   "folder name of --data)")
    p.add_argument("--instructions", metavar="PATH", help="instructions JSON (default: the embedded one)")
    p.add_argument("--ks", nargs="+", help="numbers of shots (default 1 2 4 8)")
    p.add_argument("--budgets", nargs="+", help="prompt + vector at these budgets of --compare (default: all)")
    p.add_argument("--limit", type=int, help="at most N held-out pairs (the same as --compare's)")
    p.add_argument("--neutral", metavar="PATH", help="neutral text file, one passage per line")
    p.add_argument("--texts", type=int, default=16, help="neutral passages of the cost (default 16)")
    p.add_argument("--text-tokens", type=int, default=64, help="tokens per passage (default 64)")
    p.add_argument("--batch-size", type=int, default=8, help="items per forward pass (default 8)")
    _add_model(p)
    _add_boot(p, "bootstrap resamples (default 1000)", "bootstrap seed")
    _add_out(p, "JSON result file (kind 'prompting', written atomically)")


def _conditional(p: argparse.ArgumentParser) -> None:
    """Fit a CAST condition (the topic's embedded questions against the other questions and instructions; grid
    over condition layer, comparator and threshold by F1) and report, for each vector gated by it, the effect
    kept on the topic's held-out pairs and the KL on other held-out prompts (kind 'conditional')."""
    _add_vectors(p)
    p.add_argument("--topic", default="power-seeking", help="embedded behavior whose questions open the gate "
                   "(default power-seeking)")
    p.add_argument("--layers", nargs="+", type=int, metavar="L", help="candidate condition layers (default: every "
                   "layer up to the vectors')")
    p.add_argument("--multiplier", type=float, default=1.0, help="m of m * v when the gate is open (default 1)")
    p.add_argument("--limit", type=int, help="at most N questions per group and split")
    p.add_argument("--save-condition", metavar="DIR", help="also write the fitted condition to this directory")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    _add_model(p)
    _add_out(p, "result JSON (kind 'conditional', written atomically)")


def _entanglement(p: argparse.ArgumentParser) -> None:
    """Score each behavior's vector, at its matched-cost multiplier (--compare) or --multiplier, on every behavior's
    held-out pairs, the refusal pairs and TruthfulQA MC1 (--truthfulqa); rows normalised by the on-target effect
    (kind 'entanglement'; workbench.analysis.entanglement). The figure is written to figures/ beside --out."""
    p.add_argument("--vector", action="append", metavar="BEHAVIOR=DIR", help="a behavior's vector (repeatable)")
    p.add_argument("--vectors-root", metavar="ROOT", help="find ROOT/<behavior>/L<layer>/<method> for every embedded "
                   "behavior (as `workbench reproduce` writes them)")
    p.add_argument("--method", default="bipo", help="vector folder under --vectors-root and its label in the "
                   "--compare results (default bipo)")
    p.add_argument("--layer", type=int, help="the L<layer> folder under --vectors-root (default: the only one)")
    p.add_argument("--compare", metavar="DIR", help="directory of compare_<behavior>.json results: each vector "
                   "takes its matched-cost multiplier at --budget")
    p.add_argument("--budget", type=float, default=0.1, help="the --compare budget (default 0.1)")
    p.add_argument("--multiplier", type=float, default=1.0, help="m of vectors without a --compare result "
                   "(default 1)")
    p.add_argument("--truthfulqa", metavar="PATH", help="TruthfulQA mc_task.json: also score MC1")
    p.add_argument("--truthfulqa-limit", type=int, help="at most N TruthfulQA questions")
    p.add_argument("--no-refusal", dest="refusal", action="store_false", help="leave out the embedded refusal pairs")
    p.add_argument("--limit", type=int, help="at most N held-out pairs per behavior")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per forward pass (default 16)")
    _add_model(p)
    _add_boot(p, "bootstrap resamples (default 1000)", "bootstrap seed")
    _add_out(p, "result JSON (kind 'entanglement', written atomically)")


def _mechanism(p: argparse.ArgumentParser) -> None:
    """For each vector on an embedded behavior's held-out pairs: exact activation patching of every head, MLP and
    block after the hook (necessity and sufficiency share), attribution patching (its gradient approximation),
    the direct logit attribution of the steered change, the attention shift of the top heads and, with two
    vectors or more, the comparison of their routes (workbench.analysis.patching, attribution, attention_shift,
    routes). Writes OUT/<label>_<kind>.json and the figures under OUT/figures. Exact patching is the slow one:
    --analysis attribution dla is a first look in two passes."""
    _add_vectors(p)
    p.add_argument("--behavior", "--topic", dest="behavior", required=True,
                   help="embedded behavior whose held-out pairs are used")
    p.add_argument("--analysis", action="extend", nargs="+", metavar="NAME",
                   choices=("patching", "attribution", "dla", "attention", "routes", "all"),
                   help="some of patching attribution dla attention routes, or all (default: all; routes need two "
                        "vectors and bring patching)")
    p.add_argument("--multiplier", type=float, default=1.0, help="m of the steered run (default 1)")
    p.add_argument("--pairs", type=int, default=20, metavar="N", help="the first N held-out pairs (default 20)")
    p.add_argument("--top-k", type=int, default=5, help="heads of the attention shift, by necessity share "
                   "(default 5; every head after the hook without patching)")
    p.add_argument("--batch-size", type=int, default=20, help="pairs per batch (default 20)")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="write the results only")
    _add_model(p)
    _add_boot(p, "bootstrap resamples (default 1000)", "bootstrap seed")
    _add_out(p, "output directory: one result JSON per vector and analysis (written atomically), figures/")


def build_parser() -> argparse.ArgumentParser:
    """The ``workbench`` parser; each subcommand's namespace carries ``func``, the function that runs it."""
    commands = {  # command: (its flags, the function that runs it, its one-line help); looked up at each build
        "info": (_add_model, files.run_info, "load a model and print its shape and hook points"),
        "train": (_train, train.run_train, "train or extract a steering vector (bipo, reps, caa, actadd, pca)"),
        "eval": (_eval, evaluate.run_eval, "evaluate steering vectors across multipliers"),
        "sweep": (_sweep, study.run_sweep, "layer sweep of CAA or BiPO vectors"),
        "figures": (_figures, files.run_figures, "draw every figure from saved JSON results (PNG + PDF; never "
                    "re-trains)"),
        "convert": (_convert, files.run_convert, "convert vectors: official BiPO .pt, .npy, safetensors, GGUF "
                    "control vectors"),
        "demo": (_demo, study.run_demo, "the main job: BiPO and CAA on the embedded model and data, evaluated"),
        "reproduce": (_reproduce, study.run_reproduce, "run the whole study on the embedded model and data, then draw "
                      "its figures"),
        "report": (_report, files.run_report, "print markdown tables of saved results (nothing is recomputed)"),
        "refusal": (_refusal, evaluate.run_refusal, "refusal rate and likelihood refusal signal over multipliers, "
                    "with and without jailbreak templates"),
        "compare": (_compare, evaluate.run_compare, "steering effect of several vectors at equal utility cost "
                    "(matched cost)"),
        "prompting": (_prompting, prompting.run_prompting, "prompting baseline (instruction, k shots) at the "
                      "cost and effect of compare"),
        "conditional": (_conditional, conditional.run_conditional, "steer only prompts about a topic (CAST "
                        "condition): effect kept, KL spared"),
        "entanglement": (_entanglement, entanglement.run_entanglement, "side effects: each behavior's vector on "
                         "every other behavior, refusal and TruthfulQA (entanglement matrix)"),
        "mechanism": (_mechanism, mechanism.run_mechanism, "which heads and MLPs carry a vector's effect: "
                      "activation/attribution patching, DLA, attention shift, routes"),
    }
    parser = argparse.ArgumentParser(prog="workbench", description="A TransformerLens workbench for steering vectors.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add_flags, run, help) in commands.items():  # in the order ``workbench --help`` lists them
        p = sub.add_parser(name, help=help, description=add_flags.__doc__,
                           epilog=SKIP_EXIT_CODES if name in ("figures", "report") else None)
        add_flags(p)
        p.set_defaults(func=run)
    return parser


__all__ = ["build_parser"]
