"""Transfer of steering vectors to LoRA fine-tunes of the model, at measured distances.

BiPO (Cao et al. 2024, arXiv 2406.00045, section 4.5) carries vectors made on Llama-2-7b-chat to
Vicuna and to LoRA fine-tunes of the same base. Here the analog runs offline:

* ``lora_finetunes`` fine-tunes the model with ``peft`` LoRA adapters (every attention and MLP
  projection, rank ``rank``) on an instruction/response chat dataset (default: the 40 pairs in
  ``workbench/data/chat/instructions.jsonl``, written for this project in one answer style: "In
  short: ..."), loss on the response tokens only. Every ``check_every`` steps it measures the
  fine-tune's distance from the base, the mean ``KL(p_base || p_finetune)`` per predicted token on
  neutral text; the first time it passes each of ``kl_targets`` it writes the merged weights
  (``merge_and_unload``) as a Hugging Face directory that ``workbench.load_model(path)`` opens.
  A target not passed within ``max_steps`` is recorded as unreached.
* ``lora_transfer`` measures, for each fine-tune, the retained effect of each vector (the log-odds
  shift from ``m = 0`` at ``m = ±1`` on the fine-tune over the same shift on the base, with a
  bootstrap interval over pairs; ``workbench.analysis.transfer.transfer_effect``), and the reverse: BiPO and
  CAA vectors made on the fine-tune, applied to the base. The result (kind ``transfer_lora``) has the
  fine-tunes' distances measured again on the loaded models (``model_kl``: both models on the same
  tokens of the neutral text).

Weights copied, and why: the base is written once as a Hugging Face model (``export_hf_llama``) for
``peft``, which wraps ``transformers`` modules; each saved checkpoint is a deep copy merged for
writing, so training can go on; each fine-tune loaded for transfer is a full model (the point of the
test is a different set of weights).
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.analysis.transfer import export_hf_llama, transfer_effect
from workbench.core.backend import Model
from workbench.core.io import atomic_directory, atomic_write_json
from workbench.core.loading import load_model
from workbench.core.options import with_options
from workbench.core.prompts import end_of_turn, format_chat
from workbench.core.results import TRANSFER_LORA, Result, result
from workbench.core.vector import SteeringVector
from workbench.data.behaviors import load_neutral_text
from workbench.data.pairs import DataFormatError, PreferencePair
from workbench.studies.config import LoRAFinetuneConfig, LoRATransferConfig
from workbench.train.baselines import caa
from workbench.train.bipo import train_bipo

logger = logging.getLogger(__name__)

CHAT_FILE = Path(__file__).resolve().parents[1] / "data" / "files" / "chat" / "instructions.jsonl"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def load_chat_data(path: str | Path | None = None) -> list[tuple[str, str]]:
    """``(prompt, response)`` pairs from a JSONL file of ``{"prompt", "response"}`` (default ``CHAT_FILE``)."""
    path = Path(path) if path is not None else CHAT_FILE
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(path, f"line {i}", f"not JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str) and obj[k].strip()
                                                for k in ("prompt", "response")):
            raise DataFormatError(path, f"line {i}", "needs non-empty string fields 'prompt' and 'response'")
        out.append((obj["prompt"], obj["response"]))
    if not out:
        raise DataFormatError(path, "line 1", "no chat pairs")
    return out


def _chat_examples(tokenizer: Any, chats: Sequence[tuple[str, str]], max_tokens: int) -> list[tuple[list[int], int]]:
    """Token ids of each chat (prompt turn + response + end of turn) and the prompt's length."""
    out = []
    for prompt, response in chats:
        p = tokenizer(format_chat(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        r = tokenizer(response + end_of_turn(tokenizer), add_special_tokens=False)["input_ids"]
        out.append(((p + r)[:max_tokens], min(len(p), max_tokens - 1)))
    return out


def _text_batch(tokenizer: Any, texts: Sequence[str], max_tokens: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens] for t in texts]
    ids = [i for i in ids if len(i) >= 2]
    if not ids:
        raise ValueError("neutral texts: none has two tokens")
    n = max(map(len, ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    x = torch.tensor([i + [pad] * (n - len(i)) for i in ids], device=device)
    mask = torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i in ids], device=device)
    return x, mask


def _kl(logits_p: torch.Tensor, logits_q: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean KL(p || q) over the predicted positions (every position whose next token is real)."""
    lp, lq = logits_p.float().log_softmax(-1), logits_q.float().log_softmax(-1)
    kl = (lp.exp() * (lp - lq)).sum(-1)[:, :-1]  # (batch, pos - 1)
    m = (mask[:, 1:] * mask[:, :-1]).to(kl.dtype)
    return float((kl * m).sum() / m.sum())


@torch.no_grad()
def model_kl(base: Model, target: Model, texts: Sequence[str], max_tokens: int = 128, batch_size: int = 8) -> float:
    """Mean ``KL(p_base || p_target)`` per predicted token of ``texts`` (cut to ``max_tokens``), both
    models on the same tokens (the base's tokenizer; the models must share a vocabulary)."""
    total, count = 0.0, 0
    for i in range(0, len(texts), batch_size):
        x, mask = _text_batch(base.tokenizer, texts[i: i + batch_size], max_tokens, base.cfg.device)
        lb = base(x, attention_mask=mask, return_type="logits")
        lt = target(x.to(target.cfg.device), attention_mask=mask.to(target.cfg.device), return_type="logits")
        n = float(((mask[:, 1:] * mask[:, :-1]).sum()))
        total += _kl(lb, lt.to(lb.device), mask) * n
        count += n
    return total / count


def _save_merged(peft_model: Any, tokenizer: Any, directory: Path) -> None:
    """The adapters merged into a copy of the weights, written as a Hugging Face directory (atomically)."""
    merged = copy.deepcopy(peft_model).merge_and_unload()  # a copy: training goes on with the adapters
    try:
        with atomic_directory(directory) as tmp:
            merged.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
    finally:
        del merged


def lora_finetunes(model: Model, out_dir: str | Path, *, chats: Sequence[tuple[str, str]] | None = None,
                   neutral_texts: Sequence[str] | None = None, config: LoRAFinetuneConfig | None = None,
                   progress: bool = False, **options: Any) -> list[dict[str, Any]]:
    """LoRA fine-tunes of ``model`` on chat data, saved merged when their KL passes each target.

    Args:
        model: a Llama-style model (``workbench.analysis.transfer.export_hf_llama`` writes it for ``peft``).
        out_dir: fine-tunes go to ``out_dir/kl<target>``; ``out_dir/finetunes.json`` records them.
        chats: ``(prompt, response)`` pairs (default ``load_chat_data()``).
        neutral_texts: passages for the distance (default: the embedded neutral text), the first
            ``kl_texts`` of them, cut to ``max_tokens``.
        config: the options (``LoRAFinetuneConfig``): ``kl_targets`` (distances, mean KL per token on
            neutral text, at which a checkpoint is written), ``rank`` and ``alpha`` (LoRA rank and
            scale, default ``alpha = 2 * rank``, on ``LORA_TARGETS``), ``lr``, ``batch_size``,
            ``max_steps``, ``check_every`` (AdamW on the adapters; the distance is checked every
            ``check_every`` steps), ``max_tokens``, ``kl_texts``, ``seed``.
        progress: show a progress bar.
        **options: fields of ``LoRAFinetuneConfig``, replacing those of ``config``.

    Returns:
        One record per target: ``target, reached, kl`` (at the checkpoint, or the largest seen),
        ``steps, loss`` (mean training loss of the last ``check_every`` steps), ``path`` (or None).

    Raises:
        ValueError: a target that is not a positive number, or a count under 1.
        TypeError: an option that is not a field of ``LoRAFinetuneConfig``.
    """
    # lazy: peft and transformers are heavy, and only this function needs them
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = with_options(LoRAFinetuneConfig, config, options, "lora_finetunes")
    rank, alpha, lr, batch_size = config.rank, config.alpha, config.lr, config.batch_size
    max_steps, check_every, max_tokens, seed = config.max_steps, config.check_every, config.max_tokens, config.seed
    targets = sorted(float(t) for t in config.kl_targets)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if neutral_texts is None:
        neutral_texts = load_neutral_text()
    tokenizer = model.tokenizer
    device = torch.device(model.cfg.device)
    with tempfile.TemporaryDirectory(dir=out) as tmp:  # the base as a Hugging Face model, for peft
        export_hf_llama(model, Path(tmp) / "base")
        hf = AutoModelForCausalLM.from_pretrained(Path(tmp) / "base", dtype=torch.float32).to(device)
    torch.manual_seed(seed)  # LoRA's A matrices are initialised from torch's global generator
    peft_model = get_peft_model(hf, LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=0.0, bias="none",
                                               target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM"))
    examples = _chat_examples(tokenizer, chats if chats is not None else load_chat_data(), max_tokens)
    x_kl, m_kl = _text_batch(tokenizer, list(neutral_texts)[:config.kl_texts], max_tokens, device)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def distance() -> float:
        peft_model.eval()
        with torch.no_grad():
            with peft_model.disable_adapter():
                base_logits = peft_model(input_ids=x_kl, attention_mask=m_kl).logits
            kl = _kl(base_logits, peft_model(input_ids=x_kl, attention_mask=m_kl).logits, m_kl)
        peft_model.train()
        return kl

    records: list[dict[str, Any]] = []
    losses: list[float] = []
    max_kl, pending = 0.0, list(targets)
    peft_model.train()
    steps = range(1, max_steps + 1)
    if progress:
        steps = tqdm(steps, desc="LoRA")
    for step in steps:
        idx = torch.randint(0, len(examples), (batch_size,), generator=gen).tolist()
        batch = [examples[i] for i in idx]
        n = max(len(ids) for ids, _ in batch)
        x = torch.tensor([ids + [pad] * (n - len(ids)) for ids, _ in batch], device=device)
        mask = torch.tensor([[1] * len(ids) + [0] * (n - len(ids)) for ids, _ in batch], device=device)
        labels = torch.tensor([[-100] * p + ids[p:] + [-100] * (n - len(ids)) for ids, p in batch], device=device)
        loss = peft_model(input_ids=x, attention_mask=mask, labels=labels).loss  # response tokens only
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step % check_every and step != max_steps:
            continue
        kl = distance()
        max_kl = max(max_kl, kl)
        logger.info("LoRA step %d: loss %.3f, KL %.4f", step, float(np.mean(losses[-check_every:])), kl)
        while pending and kl >= pending[0]:
            t = pending.pop(0)
            path = out / f"kl{t:g}"
            _save_merged(peft_model, tokenizer, path)
            records.append({"target": t, "reached": True, "kl": kl, "steps": step,
                            "loss": float(np.mean(losses[-check_every:])), "path": str(path)})
        if not pending:
            break
    records += [{"target": t, "reached": False, "kl": max_kl, "steps": max_steps,
                 "loss": float(np.mean(losses[-check_every:])), "path": None} for t in pending]
    info = {"rank": rank, "alpha": alpha or 2 * rank, "lr": lr, "batch_size": batch_size, "max_steps": max_steps,
            "check_every": check_every, "modules": list(LORA_TARGETS), "n_chats": len(examples),
            "kl_texts": int(x_kl.shape[0]), "max_tokens": max_tokens, "seed": seed}
    atomic_write_json({"finetunes": records, "lora": info, "losses": losses}, out / "finetunes.json")
    return records


def _rows(table: Result) -> list[dict[str, Any]]:
    """The rows of ``transfer_effect``'s result."""
    return table.table().to_dict("records")


def lora_transfer(model: Model, vectors: Mapping[str, SteeringVector], train_pairs: Sequence[PreferencePair],
                  test_pairs: Sequence[PreferencePair], out_dir: str | Path, *,
                  neutral_texts: Sequence[str] | None = None, config: LoRATransferConfig | None = None,
                  progress: bool = False, **options: Any) -> Result:
    """Retained effect of ``vectors`` on LoRA fine-tunes of ``model``, and of vectors made on each
    fine-tune applied back to the base.

    Fine-tunes already in ``out_dir`` (``finetunes.json`` made with the same settings) are reused.
    Vectors made on a fine-tune (BiPO with ``bipo_config`` and CAA at its layer, on ``train_pairs``)
    are saved in ``out_dir/kl<target>-vectors/``.

    Args:
        model: the base, a Llama-style model (``lora_finetunes``).
        vectors: ``{label: SteeringVector}`` made on the base.
        train_pairs: pairs for the vectors made on each fine-tune.
        test_pairs: held-out pairs of every effect.
        out_dir: where the fine-tunes and their vectors go.
        neutral_texts: passages of the distance (default: the embedded neutral text).
        config: the options (``LoRATransferConfig``): ``kl_targets``, ``max_steps``, ``rank``, ``lr``
            (the fine-tunes), ``bipo_config`` (BiPO on each fine-tune), ``multipliers``,
            ``utility_max_tokens``, ``batch_size``, ``n_boot``, ``seed``.
        progress: show progress bars.
        **options: fields of ``LoRATransferConfig``, replacing those of ``config``.

    Returns:
        A ``transfer_lora`` result: ``finetunes`` (target, reached, steps, kl during training and
        ``kl_measured`` on the loaded model), and ``rows`` per (fine-tune, vector, direction,
        multiplier): ``source_effect, target_effect, retained`` and its interval, where ``direction``
        is ``"base->finetune"`` or ``"finetune->base"``.

    Raises:
        TypeError: an option that is not a field of ``LoRATransferConfig``.
    """
    config = with_options(LoRATransferConfig, config, options, "lora_transfer")
    bipo_config, multipliers, batch_size = config.bipo_config, config.multipliers, config.batch_size
    out = Path(out_dir)
    if neutral_texts is None:
        neutral_texts = load_neutral_text()
    settings = {"kl_targets": sorted(map(float, config.kl_targets)), "max_steps": config.max_steps,
                "rank": config.rank, "lr": config.lr, "model": str(model.cfg.model_name)}
    record = out / "finetunes.json"
    saved = json.loads(record.read_text()) if record.is_file() else {}
    if saved.get("settings") == settings and all(f["path"] is None or Path(f["path"]).is_dir()
                                                 for f in saved["finetunes"]):
        finetunes = saved["finetunes"]
    else:
        finetunes = lora_finetunes(model, out, neutral_texts=neutral_texts, config=config.finetune_config(),
                                   progress=progress)
        atomic_write_json({**json.loads(record.read_text()), "settings": settings}, record)
    kw = {"batch_size": batch_size, "n_boot": config.n_boot, "seed": config.seed}
    rows = []
    for ft in finetunes:
        if not ft["reached"]:
            continue
        target = load_model(ft["path"], device=str(model.cfg.device))
        ft["kl_measured"] = model_kl(model, target, list(neutral_texts), config.utility_max_tokens, batch_size)
        for label, vec in vectors.items():
            table = transfer_effect(model, target, vec, test_pairs, multipliers, **kw)
            rows += [dict(r, finetune=f"kl{ft['target']:g}", kl=ft["kl_measured"], vector=label,
                          direction="base->finetune") for r in _rows(table)]
        vdir = out / f"kl{ft['target']:g}-vectors"
        if all((vdir / m / "vector.json").is_file() for m in ("bipo", "caa")):
            own = {m: SteeringVector.load(vdir / m) for m in ("bipo", "caa")}
        else:
            own = {"bipo": train_bipo(target, train_pairs, bipo_config, progress=progress).vector,
                   "caa": caa(target, train_pairs, bipo_config.layer, hook=bipo_config.hook)}
            for m, v in own.items():
                v.save(vdir / m)
        for label, vec in own.items():
            table = transfer_effect(target, model, vec, test_pairs, multipliers, **kw)
            rows += [dict(r, finetune=f"kl{ft['target']:g}", kl=ft["kl_measured"], vector=label,
                          direction="finetune->base") for r in _rows(table)]
        del target
    cols = ["finetune", "kl", "vector", "direction"]
    table = pd.DataFrame(rows)
    if len(table):
        table = table[cols + [c for c in table.columns if c not in cols]]
    return result(TRANSFER_LORA, rows=table, finetunes=finetunes, settings=settings,
                  bipo_config=bipo_config.to_dict(), n_pairs=len(test_pairs), n_train_pairs=len(train_pairs),
                  multipliers=[float(m) for m in multipliers], base=str(model.cfg.model_name))


__all__ = ["CHAT_FILE", "LORA_TARGETS", "load_chat_data", "lora_finetunes", "lora_transfer", "model_kl"]
