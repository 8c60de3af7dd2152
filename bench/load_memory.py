"""Benchmark: peak host memory of loading a local model directory, against the weights' size.

    python bench/load_memory.py [--hidden 1024] [--layers 8] [--dtype bf16] [--out bench/results/load_memory.json]
    python bench/load_memory.py --families [llama qwen2 ... gemma-3-270m] [--hidden 512] [--layers 6] [--vocab 8192]
    python bench/load_memory.py --families --hidden 1536 --layers 12 --vocab 32000   # 0.4-0.9 B parameters

Writes a random Llama directory (config.json, model.safetensors in fp32, tokenizer) into a temporary
folder, then loads it with ``workbench.core.loading.load_model`` in a fresh subprocess, reading the
process's resident memory before and its high-water mark (``VmHWM``) after. The figure is
``(peak after - resident before) / bytes of the weights in the target dtype``; the target is about
1.3 or less (weights are streamed tensor by tensor from the file straight into the model's dtype).

``--families`` measures the other families instead (``workbench.core.hf_dir``, streamed layer by
layer through TransformerLens' converters): a random directory of each, written by transformers from
its config in its public checkpoints' layout (tied embeddings, GQA, biases, head_dim, Mixtral's
experts ...), at ``--hidden``/``--layers``/``--vocab`` (default 512 / 6 / 8192, 24-31 M parameters,
where fixed costs dominate; ``--hidden 1536 --layers 12 --vocab 32000`` is 0.4-0.9 B), one family at a
time (its directory deleted before the next); and ``gemma-3-270m``, the real Gemma 3 270M directory
(``workbench.core.gemma_gguf.gemma_dir``, converted on first use), when its package is installed.
Results go to ``bench/results/load_memory_families.json`` by default (at the default size), with the
sizes, the checkpoint dtype and the machine's load average (``os.getloadavg``) before each load. Weights (and
``n_params``) count each storage once (tied embeddings share one). The tokenizer's own resident memory,
measured alone in another fresh process, is recorded too (``tokenizer_rss``), with
``ratio_without_tokenizer`` = (peak - before - tokenizer) / weights: Gemma's 262k-token tokenizer is
hundreds of MB by itself.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the peak is the process's own high-water mark VmHWM (/proc/self/status), not getrusage's ru_maxrss, which
# Linux carries over from the parent across fork + exec (under pytest it reports the test runner's size)
_CHILD = r"""
import json, sys
import psutil, torch
import workbench.core.loading as m
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
before = psutil.Process().memory_info().rss
model = m.load_model(sys.argv[1], dtype=sys.argv[2])
peak = hwm()
storages = {p.untyped_storage().data_ptr(): (p.untyped_storage().nbytes(), p.numel()) for p in model.parameters()}
weights = sum(b for b, _ in storages.values())  # each storage once: tied embeddings share one
out = {"rss_before": before, "peak_after": peak, "weights_bytes": weights,
       "ratio": (peak - before) / weights, "n_params": sum(n for _, n in storages.values()),
       "architecture": model.cfg.original_architecture}
if len(sys.argv) > 3 and sys.argv[3] == "steps":  # after the peak is read: the workbench's own steps on it
    import time
    from workbench.data.pairs import PreferencePair
    from workbench.evaluate.suite import evaluate_vectors
    from workbench.train.baselines import caa
    from workbench.train.bipo import BiPOConfig, train_bipo
    # words of the random directories' WordLevel vocabulary ("t0" ... "t<vocab>"; t0-t2 are special)
    pairs = [PreferencePair("t10 t11 t12", "t20 t21", "t30 t33"), PreferencePair("t13 t14", "t22 t23", "t31 t32")]
    layer, steps, t = model.cfg.n_layers // 2, {}, time.perf_counter()
    try:
        v_caa = caa(model, pairs, layer=layer)
        steps["caa"] = bool(torch.isfinite(v_caa.vector).all())
        v_bipo = train_bipo(model, pairs, BiPOConfig(layer=layer, lr=0.1, epochs=1, batch_size=2, warmup_steps=0,
                                                     max_length=64), progress=False).vector
        steps["bipo"] = bool(torch.isfinite(v_bipo.vector).all() and v_bipo.vector.abs().sum() > 0)
        r = evaluate_vectors(model, {"caa": v_caa, "bipo": v_bipo}, pairs, multipliers=[-1.0, 0.0, 1.0],
                             metrics=["logodds"], n_boot=20, progress=False)
        steps["eval"] = r["kind"] == "eval"
    except Exception as exc:  # recorded, not raised: the table says which step failed and why
        steps["error"] = f"{type(exc).__name__}: {exc}"[:300]
    steps["seconds"] = round(time.perf_counter() - t, 1)
    out["steps"] = steps
print(json.dumps(out))
"""


def write_random_llama(path: Path, hidden: int, layers: int, vocab: int = 8192, inter: int | None = None,
                       dtype: str = "fp32") -> Path:
    """A random Llama directory (weights in ``dtype``), written with safetensors (no transformers model)."""
    import torch
    from safetensors.torch import save_file
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    inter = inter or 4 * hidden
    heads, kv = max(1, hidden // 64), max(1, hidden // 128)
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
           "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv, "vocab_size": vocab, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
           "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False}
    (path / "config.json").write_text(json.dumps(cfg))
    g = torch.Generator().manual_seed(0)
    d_head = hidden // heads
    w = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        w |= {p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv * d_head, hidden),
              p + "self_attn.v_proj.weight": (kv * d_head, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
              p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
              p + "mlp.down_proj.weight": (hidden, inter), p + "input_layernorm.weight": (hidden,),
              p + "post_attention_layernorm.weight": (hidden,)}
    target = torch.bfloat16 if dtype == "bf16" else torch.float32
    save_file({k: (torch.randn(s, generator=g) * 0.02).to(target) for k, s in w.items()}, str(path / "model.safetensors"))
    vocab_map = {f"t{i}": i for i in range(vocab)}
    tk = Tokenizer(models.WordLevel(vocab=vocab_map, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="t1", eos_token="t2", unk_token="t0").save_pretrained(path)
    return path


FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "mixtral", "gpt2", "pythia", "phi3", "gemma", "gemma2", "gemma3",
            "olmo", "olmo2")
REAL_GEMMA = "gemma-3-270m"


def family_config(family: str, hidden: int, layers: int, vocab: int, max_pos: int = 2048):
    """A transformers config of ``family`` in its public checkpoints' layout, at ``hidden`` x ``layers``."""
    import transformers as tf

    heads = max(1, hidden // 64)
    common = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, vocab_size=vocab,
                  max_position_embeddings=max_pos)
    special = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if family == "llama":
        return tf.LlamaConfig(**common, intermediate_size=4 * hidden, num_key_value_heads=max(1, heads // 4),
                              tie_word_embeddings=False, rope_theta=5e5, **special)
    if family == "qwen2":
        return tf.Qwen2Config(**common, intermediate_size=4 * hidden, num_key_value_heads=max(1, heads // 4),
                              tie_word_embeddings=True, rope_theta=1e6, **special)
    if family == "qwen3":
        return tf.Qwen3Config(**common, intermediate_size=4 * hidden, num_key_value_heads=max(1, heads // 4),
                              head_dim=64, tie_word_embeddings=True, rope_theta=1e6, **special)
    if family == "mixtral":  # 4 experts of 2 x hidden, 2 per token (Mixtral 8x7B: 8 of 3.5 x hidden)
        return tf.MixtralConfig(**common, intermediate_size=2 * hidden, num_key_value_heads=max(1, heads // 4),
                                num_local_experts=4, num_experts_per_tok=2, sliding_window=None, rope_theta=1e6,
                                **special)
    if family == "phi3":
        return tf.Phi3Config(**common, intermediate_size=4 * hidden, num_key_value_heads=heads, sliding_window=None,
                             tie_word_embeddings=False, **special)
    if family == "gemma":
        return tf.GemmaConfig(**common, intermediate_size=4 * hidden, num_key_value_heads=1, head_dim=64, **special)
    if family in ("olmo", "olmo2"):
        cls = tf.OlmoConfig if family == "olmo" else tf.Olmo2Config
        return cls(**common, intermediate_size=4 * hidden, tie_word_embeddings=False, pad_token_id=0,
                   bos_token_id=None, eos_token_id=2)
    if family == "mistral":
        return tf.MistralConfig(**common, intermediate_size=4 * hidden, num_key_value_heads=max(1, heads // 4),
                                sliding_window=None, rope_theta=1e6, **special)
    if family == "gpt2":
        return tf.GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, vocab_size=vocab, n_positions=max_pos,
                             n_ctx=max_pos, bos_token_id=1, eos_token_id=2)
    if family == "pythia":
        return tf.GPTNeoXConfig(**common, intermediate_size=4 * hidden, rotary_pct=0.25, use_parallel_residual=True,
                                tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    if family == "gemma2":
        return tf.Gemma2Config(**common, intermediate_size=4 * hidden, num_key_value_heads=max(1, heads // 2),
                               head_dim=64, query_pre_attn_scalar=64, sliding_window=1024, **special)
    if family == "gemma3":
        return tf.Gemma3TextConfig(**common, intermediate_size=4 * hidden, num_key_value_heads=1, head_dim=64,
                                   query_pre_attn_scalar=64, sliding_window=512, **special,
                                   layer_types=[("full_attention" if (i + 1) % 6 == 0 else "sliding_attention")
                                                for i in range(layers)])
    raise ValueError(f"family {family!r} (known: {', '.join(FAMILIES)}, {REAL_GEMMA})")


def write_random_family(path: Path, family: str, hidden: int, layers: int, vocab: int = 8192,
                        dtype: str = "fp32") -> Path:
    """A random directory of ``family`` (config.json, model.safetensors in ``dtype``, tokenizer) written by
    transformers."""
    import torch
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    cfg = family_config(family, hidden, layers, vocab)
    torch.manual_seed(0)
    model = (tf.Gemma3ForCausalLM._from_config(cfg) if family == "gemma3"
             else tf.AutoModelForCausalLM.from_config(cfg))
    model.to(torch.bfloat16 if dtype == "bf16" else torch.float32).save_pretrained(path)
    del model
    tk = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="t0", bos_token="t1", eos_token="t2",
                            unk_token="t0").save_pretrained(path)
    return path


def run_families(families: list[str], hidden: int, layers: int, dtypes: list[str], vocab: int = 8192,
                 checkpoint: str = "fp32", steps: bool = True) -> dict:
    """``{family: {dtype: figures}}`` for random directories of ``families`` (and the real Gemma 3 270M),
    written in ``checkpoint`` dtype."""
    import os

    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for family in families:
            if family == REAL_GEMMA:
                from workbench.core.devices import ModelLoadError
                from workbench.core.gemma_gguf import gemma_dir

                try:
                    d = gemma_dir()
                except ModelLoadError as exc:
                    print(f"{REAL_GEMMA}: skipped ({exc})")
                    continue
            else:
                d = write_random_family(Path(tmp) / family, family, hidden, layers, vocab, checkpoint)
            mb = sum(f.stat().st_size for f in d.glob("*.safetensors")) / 2**20
            tok = tokenizer_memory(d)
            runs[family] = {}
            ckpt = "fp32" if family == REAL_GEMMA else checkpoint
            for dt in dtypes:
                if ckpt == "bf16" and dt == "fp32":
                    continue  # a bf16 checkpoint is not loaded as fp32 (its weights would be 2x its bytes)
                load = os.getloadavg()[0]
                r = measure(d, dt, steps) | {"checkpoint_dtype": ckpt, "checkpoint_mb": round(mb, 1), "tokenizer_rss": tok,
                                      "load_average_1min": round(load, 2)}
                r["ratio_without_tokenizer"] = (r["peak_after"] - r["rss_before"] - tok) / r["weights_bytes"]
                runs[family][dt] = r
                grown = (r["peak_after"] - r["rss_before"]) / 2**20
                print(f"{family:>13} ({r['architecture']}, {r['n_params'] / 1e6:.0f} M, {mb:.0f} MB {ckpt} "
                      f"checkpoint) -> "
                      f"{dt}: weights "
                      f"{r['weights_bytes'] / 2**20:.0f} MB, peak - before {grown:.0f} MB, ratio {r['ratio']:.2f} "
                      f"(tokenizer {tok / 2**20:.0f} MB; without it {r['ratio_without_tokenizer']:.2f}; "
                      f"load {load:.1f}){' steps ' + json.dumps(r['steps']) if 'steps' in r else ''}",
                      flush=True)
            if family != REAL_GEMMA:
                shutil.rmtree(d)
    return runs


_TOKENIZER_CHILD = r"""
import json, sys
import psutil
import workbench.core.loading
from transformers import AutoTokenizer
before = psutil.Process().memory_info().rss
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
print(json.dumps({"tokenizer_rss": psutil.Process().memory_info().rss - before}))
"""


def tokenizer_memory(directory: Path) -> int:
    """Resident bytes the directory's tokenizer alone adds (in a fresh process): part of every load's peak,
    large for big vocabularies (Gemma's 262k tokens)."""
    out = subprocess.run([sys.executable, "-c", _TOKENIZER_CHILD, str(directory)], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["tokenizer_rss"]


def measure(directory: Path, dtype: str, steps: bool = False) -> dict:
    """Load ``directory`` in a fresh process; its peak memory figures (see the module docstring), and with
    ``steps`` then a CAA vector, one BiPO epoch and a log-odds evaluation on it (``steps``: which ran)."""
    out = subprocess.run([sys.executable, "-c", _CHILD, str(directory), dtype, "steps" if steps else "-"],
                         capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"loading {directory} as {dtype} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=None, help="default 1024 (Llama mode), 512 (--families)")
    ap.add_argument("--layers", type=int, default=None, help="default 8 (Llama mode), 6 (--families)")
    ap.add_argument("--vocab", type=int, default=8192, help="vocabulary of the random families (--families)")
    ap.add_argument("--checkpoint-dtype", choices=["fp32", "bf16"], default="fp32",
                    help="dtype the random families are written in (--families); bf16 skips fp32 loads")
    ap.add_argument("--dtype", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--families", nargs="*", default=None, metavar="FAMILY",
                    help=f"measure these families instead (none named: {' '.join(FAMILIES)} {REAL_GEMMA})")
    ap.add_argument("--out", type=Path, default=None,
                    help="default bench/results/load_memory.json (load_memory_families.json with --families)")
    ap.add_argument("--no-steps", action="store_true",
                    help="--families: only load (by default each loaded model then trains CAA, one BiPO epoch and "
                         "is evaluated, after its peak is read)")
    args = ap.parse_args()
    from workbench.core.io import atomic_write_json

    if args.families is not None:
        families = args.families or [*FAMILIES, REAL_GEMMA]
        for f in families:
            if f != REAL_GEMMA:
                family_config(f, 64, 1, 16)  # an unknown name fails here, before anything is measured
        hidden, layers = args.hidden or 512, args.layers or 6
        import os

        load = os.getloadavg()
        runs = run_families(families, hidden, layers, args.dtype, args.vocab, args.checkpoint_dtype,
                            steps=not args.no_steps)
        atomic_write_json({"benchmark": "peak host memory of load_model(local directory), by family",
                           "hidden": hidden, "layers": layers, "vocab": args.vocab,
                           "checkpoint_dtype": args.checkpoint_dtype, "cpu_count": os.cpu_count(),
                           "load_average_start": [round(x, 2) for x in load],
                           "load_average_end": [round(x, 2) for x in os.getloadavg()],
                           "note": f"{REAL_GEMMA} is the real model (its own sizes), the others random", "runs": runs},
                          args.out or ROOT / "bench" / "results" / "load_memory_families.json")
        return 0
    args.hidden, args.layers = args.hidden or 1024, args.layers or 8
    args.out = args.out or ROOT / "bench" / "results" / "load_memory.json"

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ckpt in ("fp32", "bf16"):
            d = write_random_llama(Path(tmp) / f"random-llama-{ckpt}", args.hidden, args.layers, dtype=ckpt)
            mb = (d / "model.safetensors").stat().st_size / 2**20
            for dt in args.dtype:
                if ckpt == "bf16" and dt == "fp32":
                    continue
                r = measure(d, dt) | {"checkpoint_dtype": ckpt, "checkpoint_mb": round(mb, 1)}
                runs[f"{ckpt}->{dt}"] = r
                print(f"{ckpt} checkpoint ({mb:.0f} MB) -> {dt}: weights {r['weights_bytes'] / 2**20:.0f} MB, "
                      f"peak - before {(r['peak_after'] - r['rss_before']) / 2**20:.0f} MB, ratio {r['ratio']:.2f}")
    result = {"benchmark": "peak host memory of load_model(local Llama directory)", "hidden": args.hidden,
              "layers": args.layers, "runs": runs}
    atomic_write_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
