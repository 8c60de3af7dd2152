"""Conditional steering (CAST): a condition fitted on labelled prompts, and what gating keeps and spares.

Conditional activation steering (Lee et al. 2024, arXiv 2409.05907; IBM's ``activation-steering``) adds
a behavior vector only to prompts whose mean activation at a condition hook scores beyond a threshold
on a condition vector (``workbench.engine.gate``). Here:

* the **labelled prompts** are the embedded data's questions of one behavior (the topic, label 1)
  against the other embedded behaviors' questions and the embedded chat instructions (label 0), each
  in the chat template with BiPO's system prompt (the prompts the log-odds are scored on); the
  behaviors' fixed splits are kept (every fifth instruction is held out, as every fifth pair is);
* the **condition vector** at a hook is the mean difference of the prompts' mean activations there,
  topic minus others, on the training prompts;
* a **grid search** over condition layers (every layer whose ``resid_pre`` comes at or before the
  vectors' hook), comparators (``above``/``below``) and thresholds (the midpoints between the training
  scores) picks the condition with the best F1 on the training prompts; its F1 on the held-out prompts
  is reported beside it;
* the **evaluation** on held-out prompts: on the topic's held-out pairs, the behavior effect (mean
  log-odds shift from m = 0, ``workbench.evaluate.effects``) with and without the gate and the share
  kept (gated / ungated, paired bootstrap interval); on the other held-out prompts, the KL of the
  gated model from the unsteered one (``KL(unsteered || gated)`` per prompt token, mean over the
  prompt's positions) beside the ungated vector's, each measured by running the gated hooks.

The gated log-odds of a pair are its steered log-odds when its prompt opens the gate and its unsteered
ones otherwise: exactly what a gated forward gives (the engine's gate is bit-exact per row,
``tests/engine/test_gate.py``), computed with the one scoring engine.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from workbench.core.backend import Model
from workbench.core.options import with_options
from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT, format_chat
from workbench.core.results import CONDITIONAL, Result, result
from workbench.core.vector import SteeringVector
from workbench.data.behaviors import DATA_DIR, list_behaviors, load_behavior
from workbench.engine.gate import SteeringCondition, condition_hook, hook_order, prompt_means
from workbench.engine.steering import steer
from workbench.evaluate.effects import effect_vs_zero, retained_vs_zero
from workbench.evaluate.preference import pair_logodds
from workbench.evaluate.statistics import bootstrap_ci
from workbench.evaluate.utility import kl_unsteered_to_steered

INSTRUCTIONS_FILE = DATA_DIR / "chat" / "instructions.jsonl"
OTHERS = "others"


@dataclass(frozen=True)
class ConditionalConfig:
    """Options of ``conditional_steering``.

    Attributes:
        layers: candidate condition layers (None: every layer whose hook comes at or before the vectors').
        hook: the hook point of the condition (``resid_pre``: the input of the block, as IBM reads it).
        comparators: the comparators searched (``above``, ``below``).
        multiplier: the ``m`` of ``m * v`` applied when the gate is open.
        system_prompt: the system turn of every prompt (BiPO's by default; None: none).
        n_boot: bootstrap resamples of the intervals.
        seed: the bootstrap's seed.
        limit: at most this many questions of each group in each split (None: all).
    """

    layers: Sequence[int] | None = None
    hook: str = "resid_pre"
    comparators: Sequence[str] = ("above", "below")
    multiplier: float = 1.0
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    n_boot: int = 1000
    seed: int = 0
    limit: int | None = None

    def __post_init__(self) -> None:
        bad = [c for c in self.comparators if c not in ("above", "below")]
        if bad or not self.comparators:
            raise ValueError(f"comparators must be 'above' and/or 'below', got {list(self.comparators)}")
        if self.layers is not None and (not self.layers or any(int(x) < 0 for x in self.layers)):
            raise ValueError(f"layers must be non-negative layer indices, got {list(self.layers)}")
        if self.n_boot < 0:
            raise ValueError(f"n_boot must be >= 0, got {self.n_boot}")
        if self.limit is not None and self.limit < 2:
            raise ValueError(f"limit must be >= 2 questions per group, got {self.limit}")


# --------------------------------------------------------------------------- labelled prompts
def _instructions(split: str) -> list[str]:
    lines = [json.loads(line)["prompt"] for line in INSTRUCTIONS_FILE.read_text(encoding="utf-8").splitlines()
             if line.strip()]
    return [p for i, p in enumerate(lines) if split == "all" or (split == "test") == (i % 5 == 4)]


def labelled_questions(topic: str, split: str = "train") -> pd.DataFrame:
    """The embedded questions labelled by topic: one row per question, ``group, question, label``.

    ``label`` is 1 for the questions of behavior ``topic`` and 0 for the other embedded behaviors' and the
    embedded chat instructions' (group ``instructions``); ``split`` is ``train``, ``test`` or ``all``.
    """
    if topic not in list_behaviors():
        raise ValueError(f"topic {topic!r} is not an embedded behavior; available: {list_behaviors()}")
    rows = []
    for name in list_behaviors():
        rows += [{"group": name, "question": p.question, "label": int(name == topic)}
                 for p in load_behavior(name, split)]
    rows += [{"group": "instructions", "question": q, "label": 0} for q in _instructions(split)]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the condition and its grid
def condition_direction(means: Float[Tensor, "n d_model"], labels: Bool[Tensor, " n"]) -> Float[Tensor, " d_model"]:
    """The mean difference of the prompts' mean activations: topic (``labels``) minus others."""
    labels = torch.as_tensor(labels, dtype=torch.bool, device=means.device)
    if labels.all() or not labels.any():
        raise ValueError("labels must hold both topic (True) and other (False) prompts")
    return means[labels].float().mean(0) - means[~labels].float().mean(0)


def _f1(pred: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """F1, precision, recall of each row of ``pred`` ``(k, n)`` against ``labels`` ``(n,)``."""
    tp = (pred & labels).sum(1).astype(float)
    fp = (pred & ~labels).sum(1).astype(float)
    fn = (~pred & labels).sum(1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return f1, precision, recall


def best_threshold(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray,
                   comparators: Sequence[str] = ("above", "below")) -> dict[str, Any]:
    """The threshold and comparator of the best F1 separating ``labels`` by ``scores``.

    Candidates are the midpoints between consecutive distinct scores (and one beyond each end); ties go
    to the first comparator given, then the lower threshold.

    Returns:
        ``{"threshold", "comparator", "f1", "precision", "recall"}``.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape or s.ndim != 1 or s.size == 0:
        raise ValueError(f"scores and labels must be 1-d and of the same length, got {s.shape} and {y.shape}")
    u = np.unique(s)
    cand = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2, [u[-1] + 1.0]])  # (k,)
    best: dict[str, Any] | None = None
    for comp in comparators:
        pred = s[None, :] > cand[:, None] if comp == "above" else s[None, :] < cand[:, None]  # (k, n)
        f1, precision, recall = _f1(pred, y)
        i = int(np.argmax(f1))
        if best is None or f1[i] > best["f1"]:
            best = {"threshold": float(cand[i]), "comparator": comp, "f1": float(f1[i]),
                    "precision": float(precision[i]), "recall": float(recall[i])}
    assert best is not None
    return best


def fit_condition(model: Model, prompts: Sequence[str], labels: Sequence[bool], hook_names: Sequence[str],
                  comparators: Sequence[str] = ("above", "below")) -> tuple[SteeringCondition, pd.DataFrame]:
    """The condition of best F1 on labelled ``prompts`` over condition hooks, comparators and thresholds.

    Args:
        model: the model (unchanged).
        prompts: formatted prompts (as the gate will see them).
        labels: True for the topic's prompts.
        hook_names: candidate condition hooks.
        comparators: ``above`` and/or ``below``.

    Returns:
        ``(condition, grid)``: the best condition (its metadata holds its training F1, precision and recall)
        and one grid row per (hook, comparator) with its best threshold and F1.
    """
    y = np.asarray(labels, dtype=bool)
    if len(prompts) != len(y):
        raise ValueError(f"{len(prompts)} prompts but {len(y)} labels")
    if not hook_names:
        raise ValueError("no candidate condition hooks")
    means = prompt_means(model, prompts, hook_names)
    rows, best = [], None
    for name in hook_names:
        vector = condition_direction(means[name], torch.as_tensor(y))
        scores = SteeringCondition(vector, name).scores(means[name]).double().cpu().numpy()
        for comp in comparators:
            fit = best_threshold(scores, y, (comp,))
            rows.append({"hook_name": name, "layer": hook_order(name)[0], **fit})
            if best is None or fit["f1"] > best[1]["f1"]:
                best = (vector, fit, name)
    assert best is not None
    vector, fit, name = best
    cond = SteeringCondition(vector, name, threshold=fit["threshold"], comparator=fit["comparator"],
                             model_name=model.cfg.model_name,
                             metadata={k: fit[k] for k in ("f1", "precision", "recall")})
    return cond, pd.DataFrame(rows)


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def prompt_kl(model: Model, vector: SteeringVector, multiplier: float, prompts: Sequence[str],
              condition: SteeringCondition | None = None) -> Float[np.ndarray, " n"]:
    """Per prompt, ``KL(unsteered || steered)`` of the next-token distributions, mean over its positions;
    with ``condition`` the steered run is the gated one (each prompt is its own forward pass)."""
    out = []
    for prompt in prompts:
        tokens = model.to_tokens(prompt)  # (1, pos)
        base = model(tokens)[0].float().log_softmax(-1)  # (pos, d_vocab)
        with steer(model, vector, multiplier, condition=condition):
            steered = model(tokens)[0].float().log_softmax(-1)
        out.append(float(kl_unsteered_to_steered(base, steered).mean()))
    return np.asarray(out, dtype=np.float64)


def _candidate_hooks(model: Model, vectors: Mapping[str, SteeringVector], config: ConditionalConfig) -> list[str]:
    n_layers = int(model.cfg.n_layers)
    layers = list(range(n_layers)) if config.layers is None else [int(x) for x in config.layers]
    beyond = [x for x in layers if x >= n_layers]
    if beyond:
        raise ValueError(f"layers {beyond}: beyond the model's {n_layers} layers")
    names = [condition_hook(x, config.hook) for x in layers]
    first = min((v.hook_name for v in vectors.values()), key=hook_order)
    ok = [n for n in names if hook_order(n) <= hook_order(first)]
    if not ok:
        raise ValueError(f"layers: no candidate condition hook comes at or before the vectors' hook {first}")
    if config.layers is not None and len(ok) < len(names):
        late = sorted(set(names) - set(ok), key=hook_order)
        raise ValueError(f"layers: condition hooks {late} come after the vectors' hook {first}")
    return ok


def conditional_steering(model: Model, vectors: SteeringVector | Mapping[str, SteeringVector],
                         topic: str = "power-seeking", config: ConditionalConfig | None = None,
                         **options: Any) -> Result:
    """Fit a CAST condition for ``topic`` and measure the gated vectors (kind ``conditional``).

    Args:
        model: the model (unchanged; every hook is removed).
        vectors: one vector or ``{label: vector}`` (BiPO, CAA, RePS ...: any ``SteeringVector``).
        topic: the embedded behavior whose questions open the gate.
        config: the options (``ConditionalConfig``); ``**options`` override its fields.

    Returns:
        A ``conditional`` result: ``condition`` (the chosen hook, layer, threshold, comparator, training
        and held-out F1), ``rows`` (per vector: the effect on the topic's held-out pairs with and without
        the gate and the share kept, the KL on the other held-out prompts gated and ungated, with
        intervals, and the gate's open rates), ``grid`` (best F1 per condition layer and comparator)
        and ``scores`` (each held-out prompt's score and decision).
    """
    config = with_options(ConditionalConfig, config, options, "conditional_steering")
    vecs = {"vector": vectors} if isinstance(vectors, SteeringVector) else dict(vectors)
    if not vecs:
        raise ValueError("vectors: give at least one steering vector")
    for label, vec in vecs.items():
        if not isinstance(vec, SteeringVector):
            raise ValueError(f"vectors[{label!r}] is a {type(vec).__name__}, not a SteeringVector")
        vec.check_compatible(model)
    hooks = _candidate_hooks(model, vecs, config)
    fmt = lambda qs: [format_chat(model, q, config.system_prompt) for q in qs]  # noqa: E731
    cut = (lambda df: df) if config.limit is None else (lambda df: df.groupby("group", sort=False).head(config.limit))
    train = cut(labelled_questions(topic, "train")).reset_index(drop=True)
    condition, grid = fit_condition(model, fmt(train["question"]), train["label"].to_numpy(bool), hooks,
                                    config.comparators)
    test = cut(labelled_questions(topic, "test")).reset_index(drop=True)
    test_prompts = fmt(test["question"])
    means = prompt_means(model, test_prompts, [condition.hook_name])[condition.hook_name]
    scores = condition.scores(means)
    is_open = condition.holds(scores).cpu().numpy()
    y = test["label"].to_numpy(bool)
    f1, precision, recall = (float(a[0]) for a in _f1(is_open[None, :], y))
    condition = SteeringCondition(condition.vector, condition.hook_name, condition.threshold, condition.comparator,
                                  model_name=condition.model_name,
                                  metadata={"topic": topic, "f1_train": condition.metadata["f1"], "f1_test": f1})
    test = test.assign(score=scores.double().cpu().numpy(), open=is_open)
    pairs = load_behavior(topic, "test")[: config.limit]
    topic_open = is_open[y]  # the topic's held-out prompts, in pair order
    others = [p for p, lab in zip(test_prompts, y, strict=True) if not lab]
    rows = []
    for label, vec in vecs.items():
        lo = pair_logodds(model, {label: vec}, pairs, [0.0, config.multiplier], system_prompt=config.system_prompt,
                          progress=False)
        at0 = lo[lo.multiplier == 0.0].sort_values("pair")["logodds"].to_numpy()
        atm = lo[lo.multiplier == config.multiplier].sort_values("pair")["logodds"].to_numpy()
        gated = np.where(topic_open, atm, at0)
        boot = {"n_boot": config.n_boot, "seed": config.seed}
        ungated_e, gated_e = effect_vs_zero(atm, at0, **boot), effect_vs_zero(gated, at0, **boot)
        kept = retained_vs_zero(atm, at0, gated, at0, **boot)[2]
        kl_un = prompt_kl(model, vec, config.multiplier, others)
        kl_g = prompt_kl(model, vec, config.multiplier, others, condition)
        klo, khi = bootstrap_ci(kl_un, **boot)
        glo, ghi = bootstrap_ci(kl_g, **boot)
        rows.append({"vector": label, "method": vec.method, "hook_name": vec.hook_name,
                     "multiplier": config.multiplier, **ungated_e.columns("effect_ungated"),
                     **gated_e.columns("effect_gated"), **kept.columns("kept"),
                     "kl_others_ungated": float(kl_un.mean()), "kl_others_ungated_ci_low": klo,
                     "kl_others_ungated_ci_high": khi, "kl_others_gated": float(kl_g.mean()),
                     "kl_others_gated_ci_low": glo, "kl_others_gated_ci_high": ghi,
                     "open_topic": float(topic_open.mean()), "open_others": float(is_open[~y].mean()),
                     "n_topic": len(pairs), "n_others": len(others)})
    cond_info = {"hook_name": condition.hook_name, "layer": condition.layer, "threshold": condition.threshold,
                 "comparator": condition.comparator, "topic": topic,
                 "f1_train": condition.metadata["f1_train"], "f1_test": f1, "precision_test": precision,
                 "recall_test": recall, "n_train": len(train), "n_test": len(test),
                 "vector_norm": float(condition.vector.float().norm()), "score": "cos(h, tanh(P h))"}
    res = result(CONDITIONAL, model=model.cfg.model_name, topic=topic, multiplier=config.multiplier,
                 condition=cond_info, rows=rows, grid=grid,
                 scores=test.drop(columns=["question"]).reset_index(drop=True))
    res.steering_condition = condition  # the fitted condition itself (not serialised; save it with .save)
    return res


__all__ = ["ConditionalConfig", "best_threshold", "condition_direction", "conditional_steering", "fit_condition",
           "labelled_questions", "prompt_kl"]
