"""Transfer of steering vectors: to another model with the same width, and to other layers.

A steering vector is a direction in one model's residual stream. BiPO (Cao et al. 2024,
arXiv 2406.00045, section 4.5) reports that its vectors transfer from Llama-2-7b-chat to Vicuna-7b,
a fine-tune of the same base model. ``transfer_effect`` measures that for any two models with the
same ``d_model``: the steering effect (change of the mean held-out log-odds
``log p(matching) - log p(not matching)`` against multiplier 0, ``workbench.analysis.sweep``) on the target
divided by the effect on the source, at each multiplier. ``layer_transfer`` does the same across
depth: the vector made at layer L applied at L + k, as a table of effect against offset. Effects
against m = 0 and the share retained (with its paired bootstrap interval) come from
``workbench.evaluate.effects``; both return results (``transfer_model``, ``transfer_layers``).

To have a related target model offline, ``finetune_copy`` trains a copy of a model for a few steps
of next-token prediction on some text (only the last blocks move), and ``export_hf_llama`` writes a
Llama-style ``HookedTransformer`` back to a Hugging Face ``LlamaForCausalLM`` directory
(``config.json`` + ``model.safetensors`` + tokenizer): the inverse of TransformerLens'
``convert_llama_weights``, so that ``workbench.load_model(path)`` opens it again.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import einops
import numpy as np
import pandas as pd
import torch
from transformers import LlamaConfig

from workbench.core.backend import Model, is_bridge
from workbench.core.io import atomic_directory, atomic_write_json, atomic_write_safetensors
from workbench.core.results import TRANSFER_LAYERS, TRANSFER_MODEL, Result, result
from workbench.core.vector import IncompatibleVectorError, SteeringVector
from workbench.data.pairs import check_pairs
from workbench.engine.scoring import preference_logodds
from workbench.evaluate.effects import effect_vs_zero, retained_vs_zero

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- measuring transfer
def _pair_logodds(model: Model, vector: SteeringVector, pairs: Sequence[Any],
                  multipliers: Sequence[float], **kwargs: Any) -> np.ndarray:
    """Per pair: the log-odds unsteered (row 0) and at each multiplier (rows 1..k), ``(1 + k, n)`` float64."""
    lo = preference_logodds(model, pairs, [()] + [((vector, float(m)),) for m in multipliers], **kwargs)
    return lo.detach().double().cpu().numpy()


def transfer_effect(source: Model, target: Model, vector: SteeringVector,
                    eval_pairs: Sequence[Any], multipliers: Sequence[float] = (-1.0, 1.0), *,
                    n_boot: int = 1000, seed: int = 0, **kwargs: Any) -> Result:
    """Steering effect of ``vector`` on ``source`` and on ``target``, and the share retained.

    Args:
        source: the model the vector was made on.
        target: another model with the same ``d_model`` and the vector's hook point.
        vector: the steering vector (applied at its own hook in both models).
        eval_pairs: held-out preference pairs.
        multipliers: where the effect is measured.
        n_boot, seed: the bootstrap over pairs of ``retained`` (both effects from the same resample).
        kwargs: passed to ``workbench.engine.scoring.preference_logodds`` (``system_prompt``, ``batch_size``).

    Returns:
        A ``transfer_model`` result, one row per multiplier: ``multiplier, source_effect, target_effect, retained``
        (target / source), ``retained_ci_low, retained_ci_high`` (95 %), ``source_base_logodds,
        target_base_logodds``.

    Raises:
        IncompatibleVectorError: the target's ``d_model`` differs or it lacks the hook.
        ValueError, TypeError: ``eval_pairs`` are not preference pairs (``workbench.data.pairs.check_pairs``).
    """
    eval_pairs = check_pairs(eval_pairs, "eval_pairs")  # once; nothing below checks again
    d_src, d_tgt = int(source.cfg.d_model), int(target.cfg.d_model)
    if d_src != d_tgt:
        raise IncompatibleVectorError(
            f"cannot transfer between models of different width: source {source.cfg.model_name!r} has d_model "
            f"{d_src}, target {target.cfg.model_name!r} has d_model {d_tgt}")
    vector.check_compatible(source)
    vector.check_compatible(target)
    lo_s = _pair_logodds(source, vector, eval_pairs, multipliers, **kwargs)  # (1 + k, n)
    lo_t = _pair_logodds(target, vector, eval_pairs, multipliers, **kwargs)
    rows = []
    for i, m in enumerate(multipliers, 1):
        src, tgt, kept = retained_vs_zero(lo_s[i], lo_s[0], lo_t[i], lo_t[0], n_boot=n_boot, seed=seed)
        rows.append({"multiplier": float(m), "source_effect": src.mean, "target_effect": tgt.mean,
                     "retained": kept.mean, "retained_ci_low": kept.ci_low, "retained_ci_high": kept.ci_high,
                     "source_base_logodds": float(lo_s[0].mean()), "target_base_logodds": float(lo_t[0].mean())})
    return result(TRANSFER_MODEL, rows=pd.DataFrame(rows))


def layer_transfer(model: Model, vector: SteeringVector, eval_pairs: Sequence[Any],
                   offsets: Sequence[int] = (-2, -1, 0, 1, 2), multipliers: Sequence[float] = (1.0,),
                   **kwargs: Any) -> Result:
    """Effect of ``vector`` moved from its layer L to L + k (same hook point), for each offset k.

    Offsets that leave ``0..n_layers-1`` are skipped. The vector is not rescaled: the residual
    stream's norm grows with depth, so the same vector is relatively smaller at later layers.

    Returns:
        A ``transfer_layers`` result, one row per (offset, multiplier): ``offset, layer, multiplier,
        effect`` (the mean shift from m = 0, ``effect_vs_zero`` without an interval) and ``retained``
        (effect / effect at offset 0, when offset 0 is included).

    Raises:
        ValueError, TypeError: ``eval_pairs`` are not preference pairs (``workbench.data.pairs.check_pairs``).
    """
    eval_pairs = check_pairs(eval_pairs, "eval_pairs")  # once; nothing below checks again
    n = model.cfg.n_layers
    layers = [(k, vector.layer + k) for k in offsets if 0 <= vector.layer + k < n]
    if not layers:
        raise ValueError(f"no offset in {list(offsets)} keeps layer {vector.layer} inside 0..{n - 1}")
    moved = [vector.at(layer) for _, layer in layers]
    conds = [[]] + [[(v, float(m))] for v in moved for m in multipliers]
    lo = preference_logodds(model, eval_pairs, conds, **kwargs)
    effects = [effect_vs_zero(row, lo[0], n_boot=0).mean for row in lo[1:]]
    rows, c = [], 0
    for k, layer in layers:
        for m in multipliers:
            rows.append({"offset": k, "layer": layer, "multiplier": float(m), "effect": effects[c]})
            c += 1
    table = pd.DataFrame(rows)
    at_zero = {r.multiplier: r.effect for r in table.itertuples() if r.offset == 0}
    table["retained"] = [r.effect / at_zero[r.multiplier] if at_zero.get(r.multiplier) else float("nan")
                         for r in table.itertuples()]
    return result(TRANSFER_LAYERS, rows=table)


# --------------------------------------------------------------------------- a related model
def _is_bias(name: str) -> bool:
    return name.split(".")[-1].lstrip("_").startswith("b_")


def finetune_copy(model: Model, texts: Sequence[str], steps: int = 20, lr: float = 1e-5,
                  train_last: int = 4, seq_len: int = 64, batch_size: int = 4, seed: int = 0,
                  name: str | None = None) -> tuple[Model, list[float]]:
    """A copy of ``model`` trained briefly by next-token prediction on ``texts``; ``model`` is untouched.

    Only the last ``train_last`` blocks (and nothing else: embeddings, final norm and unembedding
    stay fixed) are trained, with AdamW, on random windows of ``seq_len`` tokens of the texts.
    All-zero biases (TransformerLens' placeholders for architectures without biases, such as
    Llama) stay zero, so a Llama-style copy can still be exported with ``export_hf_llama``.

    Returns:
        ``(copy, losses)``: the frozen, eval-mode copy (``cfg.model_name`` set to ``name``) and the
        loss of each step.
    """
    if steps < 1 or not 1 <= train_last <= model.cfg.n_layers:
        raise ValueError(f"need steps >= 1 and 1 <= train_last <= {model.cfg.n_layers}, got {steps}, {train_last}")
    ids = [t for text in texts for t in model.tokenizer(text + "\n", add_special_tokens=False)["input_ids"]]
    if len(ids) < seq_len + 1:
        raise ValueError(f"texts have {len(ids)} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    tuned = copy.deepcopy(model)
    tuned.cfg = copy.deepcopy(model.cfg)
    tuned.cfg.model_name = name or f"{model.cfg.model_name}-ft{steps}"
    # biases that are all zero do not exist in the original architecture (Llama has none): keep them
    params = [p for block in tuned.blocks[-train_last:] for pname, p in block.named_parameters()
              if not (_is_bias(pname) and not p.detach().abs().max() > 0)]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    data = torch.tensor(ids)
    losses = []
    tuned.train()
    try:
        for _ in range(steps):
            starts = torch.randint(0, len(data) - seq_len, (batch_size,), generator=gen)
            x = torch.stack([data[s: s + seq_len + 1] for s in starts]).to(tuned.cfg.device)  # (b, seq+1)
            loss = tuned(x, attention_mask=torch.ones_like(x), return_type="loss")  # mean next-token loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        tuned.eval()
        tuned.requires_grad_(False)
    return tuned, losses


def _llama_config(model: Model) -> dict[str, Any]:
    c = model.cfg
    problems = []
    if c.normalization_type not in ("RMS",) or not c.final_rms:
        problems.append(f"normalization_type={c.normalization_type!r} (needs 'RMS' with final_rms)")
    if c.positional_embedding_type != "rotary" or c.rotary_adjacent_pairs:
        problems.append("positions must be rotary with rotary_adjacent_pairs=False")
    if c.rotary_dim != c.d_head:
        problems.append(f"rotary_dim={c.rotary_dim} must equal d_head={c.d_head}")
    if not c.gated_mlp:
        problems.append("the MLP must be gated (SwiGLU)")
    if c.act_fn not in ("silu", "gelu", "relu", "gelu_new", "gelu_pytorch_tanh"):
        problems.append(f"act_fn={c.act_fn!r}")
    if getattr(c, "use_qk_norm", False) or c.output_logits_soft_cap > 0 or c.attn_scores_soft_cap > 0:
        problems.append("qk-norm and soft caps have no Llama equivalent")
    if problems:
        raise ValueError(f"model {c.model_name!r} is not Llama-style: " + "; ".join(problems))
    tok = model.tokenizer
    tied = bool(torch.equal(model.W_E, model.W_U.T))
    cfg = LlamaConfig(
        vocab_size=c.d_vocab, hidden_size=c.d_model, intermediate_size=c.d_mlp, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_key_value_heads or c.n_heads, head_dim=c.d_head,
        hidden_act=c.act_fn, max_position_embeddings=c.n_ctx, rms_norm_eps=float(c.eps),
        rope_theta=float(c.rotary_base), tie_word_embeddings=tied, attention_bias=False, mlp_bias=False,
        bos_token_id=getattr(tok, "bos_token_id", None), eos_token_id=getattr(tok, "eos_token_id", None),
        pad_token_id=getattr(tok, "pad_token_id", None),
    )
    d = cfg.to_dict()
    d["architectures"] = ["LlamaForCausalLM"]
    d["dtype"] = "float32"
    return d


def _hf_state_dict(model: Model, tied: bool) -> dict[str, torch.Tensor]:
    """TransformerLens weights in HF Llama layout (inverse of ``convert_llama_weights``)."""
    c = model.cfg
    sd: dict[str, torch.Tensor] = {"model.embed_tokens.weight": model.W_E, "model.norm.weight": model.ln_final.w}
    for layer, block in enumerate(model.blocks):
        attn, mlp, pre = block.attn, block.mlp, f"model.layers.{layer}"
        for bias in (attn.b_Q, attn.b_K, attn.b_V, attn.b_O, mlp.b_in, mlp.b_out):
            if bias.abs().max() > 0:
                raise ValueError(f"block {layer} has non-zero biases, which a Llama checkpoint cannot hold")
        w_k = attn._W_K if c.n_key_value_heads else attn.W_K  # (n_kv, d_model, d_head)
        w_v = attn._W_V if c.n_key_value_heads else attn.W_V
        sd[f"{pre}.input_layernorm.weight"] = block.ln1.w
        sd[f"{pre}.post_attention_layernorm.weight"] = block.ln2.w
        sd[f"{pre}.self_attn.q_proj.weight"] = einops.rearrange(attn.W_Q, "n m h -> (n h) m")
        sd[f"{pre}.self_attn.k_proj.weight"] = einops.rearrange(w_k, "n m h -> (n h) m")
        sd[f"{pre}.self_attn.v_proj.weight"] = einops.rearrange(w_v, "n m h -> (n h) m")
        sd[f"{pre}.self_attn.o_proj.weight"] = einops.rearrange(attn.W_O, "n h m -> m (n h)")
        sd[f"{pre}.mlp.up_proj.weight"] = mlp.W_in.T  # (d_mlp, d_model)
        sd[f"{pre}.mlp.gate_proj.weight"] = mlp.W_gate.T
        sd[f"{pre}.mlp.down_proj.weight"] = mlp.W_out.T  # (d_model, d_mlp)
    if getattr(model, "b_U", None) is not None and model.b_U.abs().max() > 0:
        raise ValueError("the unembedding has a non-zero bias, which a Llama checkpoint cannot hold")
    if not tied:
        sd["lm_head.weight"] = model.W_U.T  # (d_vocab, d_model)
    return {k: v.detach().float().contiguous().clone() for k, v in sd.items()}


def _bridge_llama(model: Model) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Config and fp32 weights of the transformers Llama inside a bridge (TransformerLens 4)."""
    hf = model.original_model
    if type(hf).__name__ != "LlamaForCausalLM":
        raise ValueError(f"model {model.cfg.model_name!r} is not Llama-style: it wraps a {type(hf).__name__}")
    config = {**hf.config.to_dict(), "architectures": ["LlamaForCausalLM"], "dtype": "float32"}
    tied = bool(config.get("tie_word_embeddings"))
    # the bridge wraps each module (``._original_component`` in the names) and gives lm_head a zero bias
    state = {k.replace("._original_component", ""): v for k, v in hf.state_dict().items()}
    bias = state.pop("lm_head.bias", None)
    if bias is not None and bias.abs().max() > 0:
        raise ValueError("the unembedding has a non-zero bias, which a Llama checkpoint cannot hold")
    return config, {k: v.detach().float().contiguous().clone() for k, v in state.items()
                    if not (tied and k == "lm_head.weight")}


def export_hf_llama(model: Model, directory: str | Path, overwrite: bool = False) -> Path:
    """Write a Llama-style ``HookedTransformer`` as a Hugging Face ``LlamaForCausalLM`` directory.

    The directory gets ``config.json``, ``model.safetensors`` (fp32) and the tokenizer files, and
    ``workbench.load_model(directory)`` loads the same model again. It is assembled in a temporary
    sibling directory and renamed into place, so a crash never leaves a half-written model.

    Raises:
        ValueError: the model is not Llama-style (RMSNorm, rotary, gated MLP, no biases), the
            or the directory exists (without ``overwrite``).
    """
    directory = Path(directory).resolve()
    if directory.exists() and not overwrite:
        raise ValueError(f"{directory} exists; pass overwrite=True to replace it")
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer to export")
    if is_bridge(model):  # a TransformerBridge wraps the transformers model itself: written as it is
        config, state = _bridge_llama(model)
    else:
        config = _llama_config(model)
        state = _hf_state_dict(model, config["tie_word_embeddings"])
    directory.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(directory) as tmp:
        model.tokenizer.save_pretrained(tmp)
        atomic_write_safetensors(state, tmp / "model.safetensors", metadata={"format": "pt"})
        atomic_write_json(config, tmp / "config.json")
    logger.info("exported %s to %s", model.cfg.model_name, directory)
    return directory
