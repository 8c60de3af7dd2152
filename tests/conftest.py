"""Shared fixtures: a tiny random Llama-style HookedTransformer with a real (tiny) tokenizer, and the
embedded SmolLM2-135M-Instruct loaded once per session."""

from __future__ import annotations

import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def worker_threads() -> int | None:
    """Under pytest-xdist (``-n``), each worker's share of the cores (at least one), else None.

    Two workers with two torch threads each on two cores wait on each other's descheduled threads at
    every parallel region, much slower than one thread each; so each worker, and every process it starts
    (notebook kernels, CLI runs), gets its share.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    return max(1, (os.cpu_count() or 1) // workers) if workers else None


if (_threads := worker_threads()) is not None:
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = str(_threads)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

if _threads is not None:
    torch.set_num_threads(_threads)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tiny_tokenizer(chat: bool = True):
    """A character-level fast tokenizer (printable ASCII + specials), built offline.

    Like SmolLM2 its pad token is its end-of-turn token ``<|im_end|>``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": specials})
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    # TransformerLens re-loads tokenizers by path, so give it one on disk
    import tempfile
    from transformers import AutoTokenizer

    directory = os.path.join(tempfile.gettempdir(), f"workbench-tiny-tokenizer-{int(chat)}-{os.getpid()}")
    tok.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def make_tiny_model(n_layers: int = 3, d_model: int = 32, seed: int = 0, chat: bool = True,
                    dtype: torch.dtype = torch.float32):
    """A tiny random Llama: a ``HookedTransformer`` on TransformerLens 3.x, a ``TransformerBridge`` on 4.x."""
    from workbench.core.backend import LINE

    if LINE == 4:
        return make_tiny_bridge(n_layers, d_model, seed, chat, dtype)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tok = make_tiny_tokenizer(chat=chat)
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_heads=4, d_head=d_model // 4, d_mlp=2 * d_model,
        d_vocab=len(tok), n_ctx=512, act_fn="silu", normalization_type="RMS",
        positional_embedding_type="rotary", rotary_dim=d_model // 4, gated_mlp=True, final_rms=True,
        n_key_value_heads=2, seed=seed, model_name=f"tiny-{n_layers}x{d_model}", default_prepend_bos=False,
        tokenizer_prepends_bos=False, original_architecture="LlamaForCausalLM", dtype=dtype,
    )
    torch.manual_seed(seed)
    model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
    # random init of TransformerLens is small; widen it so tiny models have non-trivial outputs
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.3)
    model.eval()
    model.requires_grad_(False)
    return model


def make_tiny_bridge(n_layers: int = 3, d_model: int = 32, seed: int = 0, chat: bool = True,
                     dtype: torch.dtype = torch.float32):
    """The same tiny Llama as a ``TransformerBridge`` (TransformerLens 4) around a random transformers model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.core.backend import boot_bridge

    tok = make_tiny_tokenizer(chat=chat)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=d_model, intermediate_size=2 * d_model,
                         num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, rope_theta=10000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    hf = LlamaForCausalLM(config)
    with torch.no_grad():  # as make_tiny_model: wide enough for non-trivial outputs
        for p in hf.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.3)
    hf.to(dtype).eval()
    name = f"tiny-{n_layers}x{d_model}"
    return boot_bridge(name, hf_model=hf, tokenizer=tok, model_name=name, prepend_bos=False, dtype=dtype)


#: TransformerLens parameter names of biases a Llama checkpoint does not have
LLAMA_FREE_BIASES = ("b_Q", "b_O", "b_in", "b_out", "b_U", "_b_K", "_b_V")


def make_llama_like_model(seed: int = 0):
    """A tiny model that a Llama checkpoint can hold (for export round trips): no biases, non-trivial norm weights."""
    m = make_tiny_model(seed=seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.split(".")[-1] in LLAMA_FREE_BIASES:
                p.zero_()
            elif p.ndim == 1:
                p.copy_(torch.rand_like(p) + 0.5)
    return m


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """``tl3`` tests (HookedTransformer internals: weight layout, prefix skip) skip on TransformerLens 4;
    ``tl4`` tests (the bridge against the 3.x line) skip on 3.x. Under pytest-xdist each test without an
    ``xdist_group`` of its own is grouped with its module (``--dist loadgroup``: a module's fixtures are
    made once, on one worker; the notebooks name their own groups)."""
    from workbench.core.backend import LINE

    grouped = config.pluginmanager.hasplugin("xdist")
    for item in items:
        for marker, line in (("tl3", 3), ("tl4", 4)):
            if item.get_closest_marker(marker) and LINE != line:
                item.add_marker(pytest.mark.skip(reason=f"needs TransformerLens {line}.x (installed: {LINE}.x)"))
        if grouped and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)


@pytest.fixture
def tiny_model():
    return make_tiny_model()


@pytest.fixture(scope="session")
def embedded_model():
    from workbench.core.loading import load_model

    return load_model()


def naive_logprobs(model, prompts, answers, max_length=None, groups=None):
    """Independent reference: summed answer log-probs from ONE full forward pass per row and a full
    log-softmax (no prefix cache, no key/value cache, no answer-only unembedding). Hooks attached by
    the caller (``steer``) take effect."""
    bos = model.tokenizer.bos_token_id if model.cfg.default_prepend_bos else None
    enc = lambda t: list(model.tokenizer(t, add_special_tokens=False)["input_ids"])  # noqa: E731
    rows = []
    for p, a in zip(prompts, answers):
        p_ids = enc(p)
        if bos is not None and (not p_ids or p_ids[0] != bos):
            p_ids = [bos] + p_ids
        rows.append((p_ids, enc(a)))
    cuts = [0 if max_length is None else max(0, len(p) + len(a) - max_length) for p, a in rows]
    if groups is not None:
        most = {}
        for g, c in zip(groups, cuts):
            most[g] = max(most.get(g, 0), c)
        cuts = [most[g] for g in groups]
    out = []
    with torch.no_grad():
        for (p, a), cut in zip(rows, cuts):
            p = p[cut:]
            tokens = torch.tensor([p + a], device=model.cfg.device)
            logits = model(tokens, attention_mask=torch.ones_like(tokens)).float()[0]
            lp = logits.log_softmax(-1)[:-1].gather(1, tokens[0, 1:, None]).squeeze(1)
            out.append(lp[len(p) - 1:].sum().item())
    return torch.tensor(out, dtype=torch.float64)


def write_llama_dir(path, hidden: int = 64, layers: int = 2, vocab: int | None = None, inter: int = 128,
                    rope: bool = True, dtype: torch.dtype = torch.float32, tied: bool = False, max_pos: int = 256):
    """A random Llama directory written with transformers (config.json, model.safetensors, tokenizer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tiny_tokenizer()
    rope_scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 32} if rope else None
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=vocab or len(tok), max_position_embeddings=max_pos,
                      rope_scaling=rope_scaling, rope_theta=500000.0, tie_word_embeddings=tied)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.3)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def family_config(family: str, vocab: int, hidden: int = 64, layers: int = 2, inter: int = 128, max_pos: int = 512):
    """A transformers config of ``family`` in its real checkpoints' layout (GQA, biases, tied embeddings,
    sliding windows, head_dim, partial rotary ... as the public models have them), at a tiny size."""
    import transformers as tf

    heads = 4
    common = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, vocab_size=vocab,
                  max_position_embeddings=max_pos)
    if family == "gpt2":
        return tf.GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, vocab_size=vocab, n_positions=max_pos,
                             n_ctx=max_pos)
    if family == "pythia":
        return tf.GPTNeoXConfig(**common, intermediate_size=4 * hidden, rotary_pct=0.25, use_parallel_residual=True)
    if family == "mistral":
        return tf.MistralConfig(**common, intermediate_size=inter, num_key_value_heads=2, sliding_window=None,
                                rope_theta=1e6)
    if family == "mixtral":
        return tf.MixtralConfig(**common, intermediate_size=inter, num_key_value_heads=2, num_local_experts=4,
                                num_experts_per_tok=2, sliding_window=None, rope_theta=1e6)
    if family == "qwen2":
        return tf.Qwen2Config(**common, intermediate_size=inter, num_key_value_heads=2, tie_word_embeddings=True,
                              rope_theta=1e6)
    if family == "qwen3":
        return tf.Qwen3Config(**common, intermediate_size=inter, num_key_value_heads=2, head_dim=32,
                              tie_word_embeddings=True, rope_theta=1e6)
    if family == "phi3":
        return tf.Phi3Config(**common, intermediate_size=inter, num_key_value_heads=heads, sliding_window=None,
                             pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if family == "gemma":
        return tf.GemmaConfig(**common, intermediate_size=inter, num_key_value_heads=1, head_dim=16, pad_token_id=0,
                              bos_token_id=1, eos_token_id=2)
    if family == "gemma2":
        return tf.Gemma2Config(**common, intermediate_size=inter, num_key_value_heads=2, head_dim=16,
                               query_pre_attn_scalar=16, sliding_window=4096, pad_token_id=0, bos_token_id=1,
                               eos_token_id=2)
    if family == "gemma3":
        return tf.Gemma3TextConfig(**common, intermediate_size=inter, num_key_value_heads=1, head_dim=32,
                                   query_pre_attn_scalar=32, sliding_window=512, pad_token_id=0, bos_token_id=1,
                                   eos_token_id=2, layer_types=["sliding_attention"] * (layers - 1) + ["full_attention"])
    if family == "olmo":
        return tf.OlmoConfig(**common, intermediate_size=inter, pad_token_id=0, bos_token_id=None, eos_token_id=2)
    if family == "olmo2":
        return tf.Olmo2Config(**common, intermediate_size=inter, pad_token_id=0, bos_token_id=None, eos_token_id=2)
    raise ValueError(f"family {family!r}")


FAMILIES = ("gpt2", "pythia", "mistral", "mixtral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3", "olmo",
            "olmo2")
_FAMILY_CLASSES = {"gemma3": "Gemma3ForCausalLM"}


def write_family_dir(path, family: str, dtype: torch.dtype = torch.float32, chat: bool = True, **sizes):
    """A random model directory of ``family`` (config.json, model.safetensors, tokenizer) written by transformers."""
    import transformers as tf

    tok = make_tiny_tokenizer(chat=chat)
    cfg = family_config(family, len(tok), **sizes)
    torch.manual_seed(0)
    cls = getattr(tf, _FAMILY_CLASSES.get(family, "AutoModelForCausalLM"))
    model = cls._from_config(cfg) if family in _FAMILY_CLASSES else cls.from_config(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.3) if p.ndim >= 2 else p.normal_(0, 0.1) if "norm" not in name and "ln" not in name else None
    model.to(dtype).save_pretrained(path)
    tok.save_pretrained(path)
    return path
