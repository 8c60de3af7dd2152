"""The preference-vector trainer: one steering vector optimised on preference pairs, objective given.

BiPO (Cao et al. 2024, arXiv 2406.00045; ``workbench.train.bipo``) and RePS (Wu et al. 2025,
arXiv 2505.20809; ``workbench.train.reps``) train a vector ``v`` added at every position of one hook
point of a frozen model; they differ only in the per-batch loss (an ``Objective``) and their config's
own fields (``TrainConfig`` holds the shared ones). Everything else lives here once:

* **the exact fast path**: the residual stream entering the first block after the hook is cached
  once for every pair (``workbench.engine.scoring.PrefixCache``), the reference (unsteered) log-probs
  are computed once, and each step runs only the remaining blocks, each prompt once for both
  answers, unembedding only answer positions. ``precision="bf16"`` runs those blocks in a bf16 copy of
  the model while v, the optimiser state and every log-prob sum stay fp32;
* **the optimiser**: AdamW on v alone, a linear warm-up then cosine decay (``lr_factor``), batches
  drawn by ``batch_plan``;
* **checkpoints and resume**: vector, AdamW state, RNG state and history after every epoch, written
  atomically; a resumed run equals an uninterrupted one;
* **the record**: ``TrainResult`` (the vector, one record per step and per epoch, held-out ``eval_*``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import pandas as pd
import torch
from jaxtyping import Float
from safetensors.torch import load_file
from torch import Tensor
from tqdm.auto import tqdm

from workbench.core.backend import Model, is_bridge
from workbench.core.io import json_text, safetensors_bytes
from workbench.core.artifacts import artifact_lock, recover_artifact, write_artifact
from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT, prompts_and_answers
from workbench.core.results import BIPO_HISTORY, Result, result
from workbench.core.vector import SteeringVector, __version__, full_hook_name
from workbench.data.pairs import check_pairs, fingerprint
from workbench.engine.conditions import entry
from workbench.engine.items import available_memory, tokenize_items
from workbench.engine.prefix_cache import PrefixCache
from workbench.engine.runners import make_runner, runner_bytes
from workbench.train.baselines import pair_coherence

logger = logging.getLogger(__name__)

CHECKPOINT_TENSORS = "checkpoint.safetensors"
CHECKPOINT_JSON = "checkpoint.json"
_CHECKPOINT_VERSION = 1
#: A trained vector whose norm exceeds this many times the mean residual norm at its hook is flagged
#: (a warning, ``norm_flag`` in its metadata and training record). At 1x the vector is as large as the
#: residual it is added to: after the next block's normalisation the input contributes no more than
#: the vector does, so the steered model mostly stops reading its prompt and an effect measured with
#: it (at m = 1 or beyond) is the vector's, not steering's. The vectors behind the results here are
#: 0.02-0.07x their residual (BiPO/RePS norm 8-26 against ~400 at SmolLM2-135M's layer 14), so the
#: bound leaves them 15x headroom; `--lr 1e9` gave 1.8e9 (issue #30).
NORM_FLAG_RATIO = 1.0


@dataclass(frozen=True)
class TrainConfig:
    """What every preference-trained vector shares: where it goes, the optimiser, the data, the engine.

    ``BiPOConfig`` and ``workbench.train.reps.RePSConfig`` add their objective's own fields.
    """

    layer: int = 14  # block of the hook point [15 of 32 on Llama-2-7b]
    hook: str = "resid_post"  # resid_pre, resid_mid, resid_post, attn_out, mlp_out [resid_post]
    lr: float = 5e-2  # peak AdamW learning rate [5e-4; SmolLM2's residual is ~10x larger]
    weight_decay: float = 0.05  # AdamW decoupled weight decay [declared 0.05, effective 0]
    epochs: int = 5  # passes over the pairs [20]
    batch_size: int = 4  # pairs per step [4]
    warmup_steps: int = 10  # linear warm-up, then cosine decay to 0 [100]
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT  # None: no system turn
    max_length: int | None = 256  # prompts are cut from the left beyond this many tokens
    seed: int = 0  # shuffling, directions and random init
    precision: Literal["fp32", "bf16"] = "fp32"  # dtype of the blocks after the hook
    init: Literal["zero", "random"] = "zero"  # [zero]; random: N(0, 1/d_model) per coordinate
    cache_dtype: Literal["model", "bf16"] = "model"  # storage of the cached residuals
    batching: Literal["random", "bucket"] = "random"  # bucket: batches of similar length, random order
    # CPU: keep a copy of the blocks after the hook laid out for the matmuls (faster, same numbers;
    # the blocks before it too, during the setup pass); None: where memory allows (``relayout_plan``)
    relayout: bool | None = None
    # the coherence predictor of the vector's reliability (Braun et al. 2025), in the vector's metadata:
    # one extra pass of the training pairs up to the hook (``workbench.train.baselines.pair_coherence``)
    coherence: bool = True

    #: fields with a fixed set of values (a subclass adds its own, e.g. BiPO's ``direction``)
    _options: ClassVar[dict[str, tuple[str, ...]]] = {
        "precision": ("fp32", "bf16"), "init": ("zero", "random"), "cache_dtype": ("model", "bf16"),
        "batching": ("random", "bucket")}

    def __post_init__(self) -> None:
        name = type(self).__name__
        for field_name, allowed in self._options.items():
            if getattr(self, field_name) not in allowed:
                raise ValueError(f"{name}.{field_name}={getattr(self, field_name)!r}; valid: {', '.join(allowed)}")
        full_hook_name(0, self.hook)  # raises on an unknown hook point
        checks = {"layer": self.layer >= 0, "lr": self.lr > 0,
                  "weight_decay": self.weight_decay >= 0, "epochs": self.epochs >= 1,
                  "batch_size": self.batch_size >= 1, "warmup_steps": self.warmup_steps >= 0,
                  "max_length": self.max_length is None or self.max_length >= 2} | self._checks()
        for field_name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name}.{field_name}={getattr(self, field_name)!r} is out of range")

    def _checks(self) -> dict[str, bool]:
        """The objective's own range checks, ``{field: ok}``."""
        return {}

    @property
    def hook_name(self) -> str:
        return full_hook_name(self.layer, self.hook)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; valid: {sorted(known)}")
        return cls(**d)



@dataclass
class TrainResult:
    """The trained vector (BiPO or RePS), one record per optimiser step and one per epoch."""

    vector: SteeringVector
    history: list[dict[str, float]]  # step, epoch, loss, accuracy, margin, direction, norm, grad_norm, lr
    epochs: list[dict[str, float]] = field(default_factory=list)  # epoch means, seconds, eval_* metrics
    setup_seconds: float = 0.0  # building the prefix cache and the reference log-probs
    resid_norm: float | None = None  # mean residual norm at the hook over the training tokens (None: unknown)
    norm_flag: dict[str, Any] | None = None  # set when the vector's norm > NORM_FLAG_RATIO x resid_norm

    def to_dict(self) -> Result:
        """The training record as a ``bipo_history`` result (also RePS's, ``workbench.core.results``); the
        vector is saved apart. ``resid_norm`` and, for a flagged vector, ``norm_flag`` come with it."""
        extra = {"resid_norm": self.resid_norm} if self.resid_norm is not None else {}
        extra |= {"norm_flag": self.norm_flag} if self.norm_flag else {}
        return result(BIPO_HISTORY, history=self.history, epochs=self.epochs, setup_seconds=self.setup_seconds,
                      **extra)

    def history_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.history)

    def epochs_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.epochs)



BiPOResult = TrainResult  # alias, kept for one release: the name before RePS shared the trainer (wb.BiPOResult)


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 (the Hugging Face ``cosine`` schedule)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def batch_plan(n: int, config: TrainConfig, generator: torch.Generator, lengths: Tensor | None = None,
               ) -> list[Tensor]:
    """One epoch of batches of pair indices (draws from ``generator``)."""
    perm = torch.randperm(n, generator=generator)
    if config.batching == "random" or lengths is None:
        return list(perm.split(config.batch_size))
    window = config.batch_size * 16  # sort by length inside windows, then shuffle the batches
    chunks = [c[torch.argsort(lengths[c], stable=True)] for c in perm.split(window)]
    batches = [b for c in chunks for b in c.split(config.batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator)]



# --------------------------------------------------------------------------- checkpoints
def _save_checkpoint(directory: Path, v: Tensor, opt: torch.optim.Optimizer, gen: torch.Generator,
                     meta: dict[str, Any]) -> None:
    state = opt.state[opt.param_groups[0]["params"][0]]
    tensors = {"vector": v.detach(), "rng_state": gen.get_state()}
    if state:
        tensors |= {"adam.exp_avg": state["exp_avg"], "adam.exp_avg_sq": state["exp_avg_sq"],
                    "adam.step": state["step"].reshape(1)}
    # both files committed by one directory rename (JSON last, recording the tensors' checksum): a kill
    # or a full disk at any moment leaves the previous checkpoint or this one, never a mix
    data = safetensors_bytes(tensors)
    text = json_text({**meta, "sha256": hashlib.sha256(data).hexdigest()})
    write_artifact(directory, {CHECKPOINT_TENSORS: lambda p: p.write_bytes(data),
                               CHECKPOINT_JSON: lambda p: p.write_text(text, encoding="utf-8")},
                   legacy_names=(CHECKPOINT_TENSORS, CHECKPOINT_JSON))


def _resume(directory: Path, meta: dict[str, Any], v: Tensor, opt: torch.optim.Optimizer,
            gen: torch.Generator) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Load a checkpoint written by ``_save_checkpoint`` into ``v``, ``opt`` and ``gen``; its history."""
    meta_path, tensor_path = directory / CHECKPOINT_JSON, directory / CHECKPOINT_TENSORS
    recover_artifact(directory, (CHECKPOINT_TENSORS, CHECKPOINT_JSON))  # the caller holds its lock
    try:
        saved = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{meta_path}: unreadable checkpoint ({exc})") from exc
    if saved.get("format_version") != _CHECKPOINT_VERSION:
        raise ValueError(f"{meta_path}: checkpoint format_version {saved.get('format_version')!r} is not "
                         f"{_CHECKPOINT_VERSION}")
    saved_config, config_now = saved.get("config") or {}, json.loads(json.dumps(meta["config"]))  # tuples: lists
    fields = sorted(k for k in set(saved_config) | set(config_now) if saved_config.get(k) != config_now.get(k))
    if fields:
        raise ValueError(f"{meta_path}: checkpoint from another config, cannot resume (differs in "
                         + ", ".join(f"{k}: saved {saved_config.get(k)!r}, now {config_now.get(k)!r}" for k in fields)
                         + ")")
    for key in ("data_fingerprint", "model_name"):
        if saved.get(key) != meta[key]:
            raise ValueError(f"{meta_path}: {key} differs from this run (saved {saved.get(key)!r}, now "
                             f"{meta[key]!r}); cannot resume")
    if not tensor_path.is_file() or hashlib.sha256(tensor_path.read_bytes()).hexdigest() != saved.get("sha256"):
        raise ValueError(f"{tensor_path}: missing or does not match {meta_path} (interrupted or mixed files)")
    tensors = load_file(str(tensor_path))
    with torch.no_grad():
        v.copy_(tensors["vector"])
    gen.set_state(tensors["rng_state"])
    if "adam.step" in tensors:
        state = {"step": tensors["adam.step"].reshape(()).clone(), "exp_avg": tensors["adam.exp_avg"],
                 "exp_avg_sq": tensors["adam.exp_avg_sq"]}
        opt.load_state_dict({"state": {0: state}, "param_groups": opt.state_dict()["param_groups"]})
    return saved["history"], saved["epochs"]



# --------------------------------------------------------------------------- objectives
#: ``score(delta)``: the batch's summed answer log-probs ``(b, 2)`` [matching, not matching] with
#: ``delta`` (``(d_model,)`` or ``(b, d_model)``) added at the hook; differentiable in the delta.
Score = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Objective:
    """The per-method part of preference training; the cache, schedule, checkpoints and logs are shared.

    ``batch(score, ref, lengths, v, gen, config)`` returns one step's per-pair losses ``(b,)`` and its
    statistics: ``"margin"`` (a pair is won where its margins are positive) and any other tensor, logged
    as its mean; randomness comes from ``gen``. ``signed(lp, ref, lengths, sign, config)`` returns the
    per-pair loss and margin of pairs scored at ``sign * v`` (the held-out ``eval_*`` metrics). ``ref``
    holds the unsteered summed log-probs ``(b, 2)``, ``lengths`` the answers' token counts ``(b, 2)``.
    """

    method: str  # the vector's method
    label: str  # its name in logs and messages
    batch: Callable[..., tuple[Tensor, dict[str, Tensor]]]
    signed: Callable[..., tuple[Tensor, Tensor]]



def answer_lengths(cache: PrefixCache, idx: Tensor | None = None) -> Float[Tensor, "b k"]:
    """Token counts of the answers of items ``idx`` (all by default), fp32 on the model's device."""
    lengths = cache.items.answer_lengths().view(len(cache), cache.n_answers)  # answers are stored item by item
    lengths = lengths if idx is None else lengths[idx.cpu()]
    return lengths.to(device=cache.prompt_resid.device, dtype=torch.float32)


# --------------------------------------------------------------------------- training
def _step(runner: Model, head: Model, cache: PrefixCache, idx: Tensor, v: Tensor,
          opt: torch.optim.Optimizer, gen: torch.Generator, config: TrainConfig, step: int, total: int,
          objective: Objective) -> dict[str, float]:
    """Optimiser step number ``step`` (0-based) on the pairs ``idx``; returns its history record."""
    lr = config.lr * lr_factor(step, total, config.warmup_steps)
    opt.param_groups[0]["lr"] = lr
    ref = cache.reference[idx.to(cache.reference.device)]  # (b, 2), on the model's device

    def score(delta: Tensor) -> Tensor:
        return cache.logprobs(runner, idx, delta, unembed_model=head)  # (b, 2) fp32, differentiable in v

    losses, stats = objective.batch(score, ref, answer_lengths(cache, idx), v, gen, config)
    loss = losses.mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(v.grad.norm())
    opt.step()
    margins = stats.pop("margin").detach()
    return {"step": step + 1, "loss": float(loss.detach()), "accuracy": float((margins > 0).float().mean()),
            "margin": float(margins.mean()), **{k: float(x.detach().float().mean()) for k, x in stats.items()},
            "norm": float(v.detach().norm()), "grad_norm": grad_norm, "lr": lr}


@torch.no_grad()
def _evaluate(runner: Model, head: Model, cache: PrefixCache, v: Tensor,
              objective: Objective, config: TrainConfig, batch_size: int) -> dict[str, float]:
    out: dict[str, float] = {}
    ref, lengths = cache.reference, answer_lengths(cache)
    losses = []
    for sign, tag in ((1.0, "plus"), (-1.0, "minus")):
        lp = cache.score(runner, sign * v, batch_size=batch_size, unembed_model=head)
        loss, margins = objective.signed(lp, ref, lengths, sign, config)
        losses.append(loss)
        out[f"eval_accuracy_{tag}"] = float((margins > 0).float().mean())
        out[f"eval_logodds_{tag}"] = float((lp[:, 0] - lp[:, 1]).mean())
    out["eval_loss"] = float(torch.cat(losses).mean())
    out["eval_logodds_zero"] = float((ref[:, 0] - ref[:, 1]).mean())
    return out



def train_preference_vector(model: Model, pairs: Sequence[Any], config: TrainConfig,
                            objective: Objective, *, checkpoint_dir: str | Path | None = None,
                            resume: bool = False, progress: bool = True, eval_pairs: Sequence[Any] | None = None,
                            callback: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """The trainer of ``train_bipo`` (see there for the arguments) with the objective as a parameter
    (``workbench.train.bipo.BIPO``, ``workbench.train.reps.REPS``)."""
    label = objective.label
    pairs = check_pairs(pairs)
    eval_pairs = None if eval_pairs is None else check_pairs(eval_pairs, "eval_pairs")
    if config.layer >= model.cfg.n_layers:
        raise ValueError(f"{type(config).__name__}.layer={config.layer} but model {model.cfg.model_name!r} has "
                         f"{model.cfg.n_layers} layers (0..{model.cfg.n_layers - 1})")
    site = config.hook_name
    data_fp = fingerprint(pairs)
    gen = torch.Generator().manual_seed(config.seed)
    v = torch.zeros(model.cfg.d_model, dtype=torch.float32, device=model.cfg.device)
    if config.init == "random":
        v = torch.randn(model.cfg.d_model, generator=gen).to(v) / math.sqrt(model.cfg.d_model)
    v.requires_grad_(True)
    opt = torch.optim.AdamW([v], lr=config.lr, weight_decay=config.weight_decay)
    history: list[dict[str, float]] = []
    epochs: list[dict[str, float]] = []
    meta = {"format_version": _CHECKPOINT_VERSION, "config": config.to_dict(), "data_fingerprint": data_fp,
            "model_name": str(model.cfg.model_name), "workbench_version": __version__}
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    # one writer per checkpoint directory: a second run into it fails at once, naming this process
    lock = artifact_lock(ckpt, wait=0) if ckpt is not None else contextlib.nullcontext()
    with lock:
        if ckpt is not None:
            recover_artifact(ckpt, (CHECKPOINT_TENSORS, CHECKPOINT_JSON))
        if ckpt is not None and (ckpt / CHECKPOINT_JSON).exists():
            if not resume:
                raise FileExistsError(f"{ckpt / CHECKPOINT_JSON} exists: pass resume=True to continue it, or "
                                      "choose another checkpoint_dir")
            history, epochs = _resume(ckpt, meta, v, opt, gen)
            logger.info("%s: resumed from %s after epoch %d", label, ckpt, len(epochs))
        elif resume:
            logger.info("%s: no checkpoint in %s; starting from scratch", label, ckpt)

        t0 = time.perf_counter()
        # the blocks after the hook run in a private (bf16 or laid-out fp32) copy; the caller's model unembeds
        plan = relayout_plan(model, config)
        logger.info("%s: %s", label, plan["message"])
        start = entry(model, site)[0]
        precision = torch.bfloat16 if config.precision == "bf16" else None
        runner = make_runner(model, start, precision) if plan["relayout"] or precision else model
        cache_dtype = torch.bfloat16 if config.cache_dtype == "bf16" else runner.cfg.dtype
        # the setup pass runs the blocks before the hook once: in a laid-out copy of them too, dropped after
        lower = make_runner(model, 0, stop_layer=start) if plan["relayout"] and plan["lower_bytes"] else model

        def build(these: Sequence[Any], show: bool = False) -> PrefixCache:
            items = tokenize_items(model, *prompts_and_answers(model, these, config.system_prompt), config.max_length)
            return PrefixCache.build(lower, items, site, runner=runner, dtype=cache_dtype, progress=show)

        cache = build(pairs, progress)
        if eval_pairs is not None:
            eval_cache = build(eval_pairs)
        del lower
        resid_norm = residual_norm(cache)
        setup_seconds = time.perf_counter() - t0
        logger.info("%s: cached %d pairs at %s (%.0f MB) in %.1f s", label, len(cache), site, cache.nbytes / 2**20,
                    setup_seconds)

        n = len(cache)
        steps_per_epoch = math.ceil(n / config.batch_size)
        total = steps_per_epoch * config.epochs
        lengths = cache.lengths()
        bar = tqdm(total=total, initial=len(history), desc=label, disable=not progress)
        try:
            for epoch in range(len(epochs), config.epochs):
                t_epoch = time.perf_counter()
                for idx in batch_plan(n, config, gen, lengths):
                    record = _step(runner, model, cache, idx, v, opt, gen, config, len(history), total, objective)
                    if not (math.isfinite(record["loss"]) and torch.isfinite(v.detach()).all()):
                        kept = f"; the last good checkpoint ({len(epochs)} epoch(s)) is kept in {ckpt}" if ckpt else ""
                        raise ValueError(f"{label} step {len(history) + 1}: the loss or the vector became NaN or "
                                         f"infinite (loss {record['loss']}); stopped{kept}. Lower the learning "
                                         f"rate (now {config.lr:g})")
                    history.append(record | {"epoch": epoch + 1})
                    bar.update(1)
                    bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", norm=f"{history[-1]['norm']:.2f}")
                recent = history[-steps_per_epoch:]
                record = {"epoch": epoch + 1, "step": len(history), "seconds": time.perf_counter() - t_epoch,
                          "loss": sum(h["loss"] for h in recent) / len(recent),
                          "accuracy": sum(h["accuracy"] for h in recent) / len(recent), "norm": recent[-1]["norm"]}
                if eval_pairs is not None:
                    record |= _evaluate(runner, model, eval_cache, v.detach(), objective, config, 16)
                epochs.append(record)
                logger.info("%s epoch %d: %s", label, epoch + 1, {k: round(x, 4) for k, x in record.items()})
                if ckpt is not None:
                    _save_checkpoint(ckpt, v, opt, gen, {**meta, "epoch": epoch + 1, "step": len(history),
                                                         "history": history, "epochs": epochs})
                    _vector(model, v, config, data_fp, epochs, objective, resid_norm).save(
                        ckpt / "vectors" / f"epoch_{epoch + 1:03d}")
                if callback is not None:
                    callback(record)
        finally:
            bar.close()
        vector = _vector(model, v, config, data_fp, epochs, objective, resid_norm)
        if config.coherence:
            coherence = pair_coherence(model, pairs, config.hook_name, system_prompt=config.system_prompt,
                                       max_length=config.max_length, progress=False)
            vector = vector.replace(metadata={**vector.metadata, **coherence})
        flag = vector.metadata.get("norm_flag")
        if flag:
            logger.warning("%s: %s", label, flag["message"])
        return TrainResult(vector, history, epochs, setup_seconds, resid_norm, flag)


def relayout_plan(model: Model, config: TrainConfig) -> dict[str, Any]:
    """Whether the trainer keeps a re-laid-out copy of the blocks after the hook, and its size.

    On CPU, TransformerLens copies most block weights into a transposed contiguous tensor at every call;
    the trainer's runner (``engine.runners.make_runner``) stores them laid out once, for the blocks
    after the hook for the whole run and for the blocks before it during the setup pass only (same
    numbers, faster). ``config.relayout``: True/False, or None (auto: on where both copies together
    take at most half the available memory, ``engine.items.available_memory``). A bf16 run converts
    the blocks after the hook anyway (always laid out); off the CPU nothing is re-laid out.

    Returns:
        ``{"relayout", "upper_bytes", "lower_bytes", "available_bytes", "message"}``: the bytes of the
        copies (blocks after the hook, kept; blocks before it, during the setup) and a one-line message.
    """
    start = entry(model, config.hook_name)[0]
    on_cpu = torch.device(model.cfg.device or "cpu").type == "cpu"
    upper = runner_bytes(model, start) if on_cpu and not is_bridge(model) else 0
    lower = runner_bytes(model, 0, stop_layer=start) if on_cpu and not is_bridge(model) else 0
    available = available_memory(model.cfg.device)
    relayout = config.relayout
    if relayout is None:
        relayout = upper > 0 and (available is None or upper + lower <= available / 2)
    relayout = bool(relayout and upper > 0)
    n = model.cfg.n_layers
    mb = lambda b: f"{b / 2**20:,.0f} MB"  # noqa: E731
    free = f", {mb(available)} available" if available is not None else ""
    if upper == 0:
        message = "no re-laid-out copy of the blocks (off the CPU, or a TransformerBridge: nothing to lay out)"
    elif relayout:
        message = (f"re-laid-out copy of blocks {start}..{n - 1}: {mb(upper)}, and of blocks 0..{start - 1} "
                   f"during the setup: {mb(lower)}{free} (--no-relayout: none, slower)")
    else:
        message = (f"no re-laid-out copy of blocks {start}..{n - 1} ({mb(upper)} + {mb(lower)} during the "
                   f"setup{free}; --relayout to make it)")
    if config.precision == "bf16" and upper:
        message += f"; bf16 copy of blocks {start}..{n - 1}: {mb(runner_bytes(model, start, torch.bfloat16))}"
    return {"relayout": relayout, "upper_bytes": upper, "lower_bytes": lower if relayout else 0,
            "available_bytes": available, "message": message}


def residual_norm(cache: PrefixCache) -> float | None:
    """The mean L2 norm of the unsteered residual where the vector enters, over the cached prompt and
    answer tokens, each prompt's first position left out (its norm is an outlier in most models: the
    attention sink). None where nothing is cached (a TransformerBridge model runs the full forward)."""
    total, count = 0.0, 0
    for flat, offsets in ((cache.prompt_resid, cache.prompt_offsets), (cache.answer_resid, None)):
        keep = torch.ones(len(flat), dtype=torch.bool)
        if offsets is not None and len(flat):
            starts = offsets[:-1][offsets[:-1] < offsets[1:]]  # items with a non-empty prompt
            keep[starts] = False
        keep = keep.to(flat.device)
        for rows, mask in zip(flat.split(4096), keep.split(4096), strict=True):
            norms = rows.float().norm(dim=-1)[mask]  # (rows,)
            total += float(norms.sum())
            count += int(norms.numel())
    return total / count if count else None


def norm_flag(norm: float, resid_norm: float | None, loss: float | None, config: TrainConfig,
              label: str = "the vector") -> dict[str, Any] | None:
    """The flag of a vector whose norm exceeds ``NORM_FLAG_RATIO`` times the residual norm at its hook
    (``{"norm", "resid_norm", "ratio", "bound", "loss", "lr", "message"}``), else None."""
    if resid_norm is None or resid_norm <= 0 or not norm > NORM_FLAG_RATIO * resid_norm:
        return None
    ratio = norm / resid_norm
    said = f"final loss {loss:.4g}" if loss is not None else "no epoch finished"
    message = (f"{label}'s norm {norm:.4g} is {ratio:.3g} x the mean residual norm {resid_norm:.4g} at "
               f"{config.hook_name} (flagged above {NORM_FLAG_RATIO:g} x): steering with it drowns the input, so "
               f"its effects say little ({said}, lr {config.lr:g}); lower the learning rate")
    return {"norm": norm, "resid_norm": resid_norm, "ratio": ratio, "bound": NORM_FLAG_RATIO, "loss": loss,
            "lr": config.lr, "message": message}


def _vector(model: Model, v: Tensor, config: TrainConfig, data_fp: str,
            epochs: list[dict[str, float]], objective: Objective, resid_norm: float | None = None) -> SteeringVector:
    last = epochs[-1] if epochs else {}
    metadata = {"epochs_trained": len(epochs), "final_loss": last.get("loss"),
                "final_accuracy": last.get("accuracy"), "steps": last.get("step")}
    metadata |= {k: x for k, x in last.items() if k.startswith("eval_")}
    if resid_norm is not None:
        metadata["resid_norm"] = resid_norm
        flag = norm_flag(float(v.detach().float().norm()), resid_norm, last.get("loss"), config,
                         f"the {objective.label} vector")
        if flag:
            metadata["norm_flag"] = flag
    return SteeringVector(v.detach().clone().cpu(), config.hook_name, model_name=str(model.cfg.model_name),
                          method=objective.method, config=config.to_dict(), data_fingerprint=data_fp,
                          metadata=metadata)



def checkpoint_vectors(checkpoint_dir: str | Path) -> dict[str, SteeringVector]:
    """``{"epoch 1": vector, ...}``: the vector after each epoch of a run trained with ``checkpoint_dir``.

    The trainer writes each epoch's vector beside the checkpoint (``checkpoint_dir/vectors/epoch_NNN``,
    a ``SteeringVector`` directory); this reads them back in epoch order, e.g. to follow a vector's
    route over training (``workbench.analysis.routes.route_patching``).

    Raises:
        FileNotFoundError: ``checkpoint_dir`` holds no epoch vectors.
    """
    root = Path(checkpoint_dir) / "vectors"
    paths = sorted(root.glob("epoch_*")) if root.is_dir() else []
    if not paths:
        raise FileNotFoundError(f"{checkpoint_dir}: no epoch vectors (expected {root}/epoch_001, ...): train with "
                                "checkpoint_dir=... to write them")
    return {f"epoch {int(p.name.split('_')[1])}": SteeringVector.load(p) for p in paths}


__all__ = ["BiPOResult", "CHECKPOINT_JSON", "CHECKPOINT_TENSORS", "NORM_FLAG_RATIO", "Objective", "Score", "TrainConfig", "TrainResult",
           "answer_lengths", "batch_plan", "checkpoint_vectors", "lr_factor", "norm_flag", "relayout_plan", "residual_norm", "train_preference_vector"]
