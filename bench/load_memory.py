"""Benchmark: peak host memory of loading a local Llama directory, against the weights' size.

    python bench/load_memory.py [--hidden 1024] [--layers 8] [--dtype bf16] [--out bench/results/load_memory.json]

Writes a random Llama directory (config.json, model.safetensors in fp32, tokenizer) into a temporary
folder, then loads it with ``workbench.core.loading.load_model`` in a fresh subprocess, reading the
process's resident memory before and its high-water mark (``VmHWM``) after. The figure is
``(peak after - resident before) / bytes of the weights in the target dtype``; the target is about
1.3 or less (weights are streamed tensor by tensor from the file straight into the model's dtype).
"""

from __future__ import annotations

import argparse
import json
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
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"rss_before": before, "peak_after": peak, "weights_bytes": weights,
                  "ratio": (peak - before) / weights, "n_params": sum(p.numel() for p in model.parameters())}))
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


def measure(directory: Path, dtype: str) -> dict:
    """Load ``directory`` in a fresh process; its peak memory figures (see the module docstring)."""
    out = subprocess.run([sys.executable, "-c", _CHILD, str(directory), dtype], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--dtype", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "load_memory.json")
    args = ap.parse_args()
    from workbench.core.io import atomic_write_json

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
