"""The prompting baseline: does steering beat simply asking, at the same cost?

AxBench (Wu et al. 2025, arXiv 2501.17148) finds that prompting beats every steering method it
tests; RePS (Wu et al. 2025, arXiv 2505.20809) narrows the gap. Here a behavior is elicited or
suppressed by asking, in two ways, each a *method* beside the vectors of a matched-cost comparison
(``workbench.analysis.equal_cost``):

* ``instruction``: a sentence written per behavior and direction (``workbench.data.instructions``),
  appended to the system prompt (BiPO's by default);
* ``kshot``: ``k`` examples from the training pairs (``k = 1, 2, 4, 8``) as earlier user/assistant
  turns before the question, each showing the matching answer (elicit) or the not-matching one
  (suppress);
* ``instruction+<vector>`` (when a matched-cost result and its vectors are given): the instruction
  and the vector at the multiplier where its cost reached each budget, in the same direction.

Both numbers are those of ``matched_cost``:

* **Effect**: the held-out log-odds ``log p(matching) - log p(not matching)`` (the scoring engine,
  ``workbench.engine.scoring``: the same chat prompt, end-of-turn string and truncation rule) with the
  prompt, minus the unprompted log-odds of the same pair (the default system prompt alone); mean and
  paired percentile bootstrap interval (``workbench.evaluate.effects.effect_vs_zero``).
* **Cost**: ``KL(p_unprompted || p_prompted)`` per predicted token of the neutral passages
  (``workbench.evaluate.utility``'s ``kl_from_unsteered``, the same direction and tokenisation): the
  unprompted model reads each passage as ``utility_per_text`` does (BOS, then the passage); the
  prompted one reads the method's context first (the instruction as a system turn, the shots as
  chat turns, as the chat template renders them), and only the passage's tokens are scored. An
  empty instruction adds nothing, so its cost and effect are exactly zero.

``prompting_baseline`` returns a ``prompting`` result (``workbench.core.results``);
``with_prompting_points`` adds its rows to a ``matched_cost`` result's ``points`` so that the
cost-effect figure draws them beside the vectors.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from workbench.core.backend import Model
from workbench.core.options import with_options
from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT, end_of_turn, has_chat_template, prompts_and_answers
from workbench.core.results import MATCHED_COST, PROMPTING, Result, from_dict, result
from workbench.core.vector import SteeringVector
from workbench.data.instructions import behavior_instructions
from workbench.data.pairs import PreferencePair, check_pairs
from workbench.engine.conditions import Condition
from workbench.engine.items import Items, tokenize_items
from workbench.engine.readout import unembed
from workbench.engine.scoring import answer_logprobs, run_conditions
from workbench.evaluate.effects import effect_vs_zero
from workbench.evaluate.statistics import bootstrap_interval
from workbench.evaluate.utility import _tokenize_texts, check_texts, kl_unsteered_to_steered

#: direction -> the name of the instruction asking for it
GOALS = {1: "elicit", -1: "suppress"}
#: the columns of a prompting result's ``rows``
COLUMNS = ("method", "direction", "k", "vector", "budget", "multiplier", "cost", "cost_ci_low", "cost_ci_high",
           "effect", "ci_low", "ci_high", "n")


@dataclass(frozen=True)
class PromptingConfig:
    """Options of ``prompting_baseline`` (one field per option)."""

    ks: tuple[int, ...] = (1, 2, 4, 8)  # numbers of shots
    directions: tuple[int, ...] = (1, -1)  # 1: elicit, -1: suppress
    instructions: Mapping[str, str] | None = None  # {"elicit", "suppress"}; None: the behavior's (data.instructions)
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT  # the unprompted system turn; the instruction is appended
    shot_seed: int = 0  # which training pairs are the shots (a seeded shuffle; the first k of it)
    budgets: tuple[float, ...] | None = None  # prompt + vector at these budgets of the matched result (None: all)
    max_length: int | None = 1024  # prompt + answer tokens (prompts cut from the left beyond it)
    max_tokens: int = 64  # tokens per neutral passage
    batch_size: int = 8
    n_boot: int = 1000  # bootstrap resamples of the intervals
    seed: int = 0  # the bootstrap's seed
    chunk: int = 256  # positions per full-vocabulary log-softmax
    extra: Mapping[str, Any] = field(default_factory=dict)  # recorded in the result as it is

    def __post_init__(self) -> None:
        ks = tuple(self.ks)
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
            raise ValueError(f"ks={self.ks!r}: each k must be a whole number >= 1")
        object.__setattr__(self, "ks", ks)
        dirs = tuple(self.directions)
        if not dirs or any(d not in GOALS for d in dirs):
            raise ValueError(f"directions={self.directions!r}: use 1 (elicit) and/or -1 (suppress)")
        object.__setattr__(self, "directions", dirs)
        if self.instructions is not None:
            for d in dirs:
                text = self.instructions.get(GOALS[d]) if isinstance(self.instructions, Mapping) else None
                if not isinstance(text, str):
                    raise ValueError(f"instructions: needs a {GOALS[d]!r} text (a string; '' asks nothing)")
        for name in ("max_tokens", "batch_size", "chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be >= 1")
        if self.max_tokens < 2:
            raise ValueError(f"max_tokens={self.max_tokens}: a passage needs at least 2 tokens")


# --------------------------------------------------------------------------- prompts
def _tok(model: Model) -> Any:
    return getattr(model, "tokenizer", model)


def _render(model: Model, messages: list[dict[str, str]], generation: bool) -> str:
    """``messages`` through the chat template; a system turn folded into the first user turn where the
    template rejects a system role (as ``core.prompts.format_chat`` does)."""
    tok = _tok(model)
    try:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    except Exception:
        if not messages or messages[0]["role"] != "system" or len(messages) < 2:
            raise
        first = dict(messages[1], content=f"{messages[0]['content']}\n\n{messages[1]['content']}")
        return tok.apply_chat_template([first, *messages[2:]], tokenize=False, add_generation_prompt=generation)


def with_instruction(system_prompt: str | None, instruction: str) -> str | None:
    """The system prompt with ``instruction`` appended (``""``: the system prompt unchanged)."""
    if not instruction:
        return system_prompt
    return f"{system_prompt} {instruction}" if system_prompt else instruction


def _shot_turns(shots: Sequence[PreferencePair], direction: int) -> list[dict[str, str]]:
    return [m for p in shots for m in ({"role": "user", "content": p.question},
                                       {"role": "assistant", "content": p.matching if direction > 0 else p.not_matching})]


def kshot_prompt(model: Model, question: str, shots: Sequence[PreferencePair], direction: int,
                 system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> str:
    """The chat prompt of ``question`` after the ``shots`` as earlier turns, ending where the answer begins.

    Each shot is its question (a user turn) and its matching answer (``direction`` 1) or its
    not-matching one (-1) as an assistant turn. Without a chat template: ``"Question: ...\\nAnswer: ..."``
    blocks before the plain fallback of ``format_chat``.
    """
    if has_chat_template(model):
        sys_turn = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
        return _render(model, sys_turn + _shot_turns(shots, direction) + [{"role": "user", "content": question}], True)
    prefix = f"{system_prompt}\n\n" if system_prompt else ""
    blocks = "".join(f"Question: {t['content']}\n" if t["role"] == "user" else f"Answer: {t['content']}\n\n"
                     for t in _shot_turns(shots, direction))
    return f"{prefix}{blocks}Question: {question}\nAnswer:"


def instruction_context(model: Model, instruction: str) -> str:
    """The text the instruction puts before a passage for the cost: its system turn as the chat template
    renders it (without a template: the instruction and a blank line); ``""`` for no instruction."""
    if not instruction:
        return ""
    if has_chat_template(model):
        try:
            return _tok(model).apply_chat_template([{"role": "system", "content": instruction}], tokenize=False,
                                                   add_generation_prompt=False)
        except Exception:  # no system role: the instruction as a user turn
            return _render(model, [{"role": "user", "content": instruction}], False)
    return f"{instruction}\n\n"


def kshot_context(model: Model, shots: Sequence[PreferencePair], direction: int,
                  system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> str:
    """The text the shots put before a passage for the cost: their turns as the chat template renders
    them after the system turn (the system turn itself is not part of it); ``""`` for no shots."""
    if not shots:
        return ""
    if not has_chat_template(model):
        return "".join(f"Question: {t['content']}\n" if t["role"] == "user" else f"Answer: {t['content']}\n\n"
                       for t in _shot_turns(shots, direction))
    sys_turn = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    whole = _render(model, sys_turn + _shot_turns(shots, direction), False)
    if sys_turn:
        head = _render(model, sys_turn, False)
        if whole.startswith(head):
            return whole[len(head):]
    return whole


def choose_shots(train_pairs: Sequence[PreferencePair], k: int, seed: int = 0) -> list[PreferencePair]:
    """The first ``k`` training pairs of a seeded shuffle (so the shots of ``k`` are among those of ``2k``)."""
    order = list(range(len(train_pairs)))
    random.Random(seed).shuffle(order)
    return [train_pairs[i] for i in order[:k]]


# --------------------------------------------------------------------------- the two measures
def _logodds(model: Model, prompts: Sequence[str], pairs: Sequence[PreferencePair], conditions: Sequence[Condition],
             cfg: PromptingConfig) -> Tensor:
    """``(n_conditions, n_pairs)`` log-odds of each pair's two answers after its prompt (the engine's rule)."""
    eot = end_of_turn(model)
    bound = cfg.max_length if cfg.max_length is not None else model.cfg.n_ctx
    items = tokenize_items(model, list(prompts), [[p.matching + eot, p.not_matching + eot] for p in pairs],
                           min(bound, model.cfg.n_ctx))  # k shots can outgrow a small model's context
    lp = answer_logprobs(model, items, conditions, batch_size=cfg.batch_size)
    lp = lp.view(len(conditions), len(pairs), 2)
    return lp[..., 0] - lp[..., 1]


class _Passages:
    """The neutral passages tokenised once, and the unprompted model's final residuals on them."""

    def __init__(self, model: Model, texts: list[str], cfg: PromptingConfig):
        self.model, self.cfg = model, cfg
        self.ids = _tokenize_texts(model, texts, cfg.max_tokens)
        self.bos = bool(model.cfg.default_prepend_bos and _tok(model).bos_token_id is not None)
        self.n_tokens = np.array([len(r) - 1 for r in self.ids], dtype=np.float64)
        self.ref = self._residuals("", [()])[0]

    def _items(self, context: str) -> Items:
        ctx = list(_tok(self.model)(context, add_special_tokens=False)["input_ids"]) if context else []
        room = max(0, int(self.model.cfg.n_ctx) - max((len(r) for r in self.ids), default=0))
        ctx = ctx[len(ctx) - room:] if len(ctx) > room else ctx  # cut from the left to fit the context window
        # the passage's first token (BOS, or its first word without one) stays the last of the prompt
        prompts = [r[:1] + ctx if self.bos else ctx + r[:1] for r in self.ids]
        return Items.from_ids(prompts, [[r[1:]] for r in self.ids])

    @torch.no_grad()
    def _residuals(self, context: str, conditions: Sequence[Condition]) -> list[list[Tensor]]:
        """Per condition, per passage: the final residuals that predict the passage's tokens."""
        out: list[list[Tensor | None]] = [[None] * len(self.ids) for _ in conditions]
        for _, a_idx, readouts in run_conditions(self.model, self._items(context), conditions,
                                                 batch_size=self.cfg.batch_size, desc="prompting cost"):
            for c, r in enumerate(readouts):
                for j, a in enumerate(a_idx.tolist()):
                    out[c][a] = r.h[r.answer == j]  # (n_tokens, d_model), in position order
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def kl(self, context: str, conditions: Sequence[Condition] = ((),)) -> list[np.ndarray]:
        """Per condition: summed ``KL(p_unprompted || p_prompted)`` over each passage's tokens."""
        res = self._residuals(context, conditions)
        out = []
        for per_text in res:
            sums = np.zeros(len(self.ids))
            for i, (h, h0) in enumerate(zip(per_text, self.ref)):
                for s in range(0, len(h), self.cfg.chunk):
                    lp = unembed(self.model, h[s: s + self.cfg.chunk]).log_softmax(-1)  # (chunk, d_vocab) prompted
                    ref = unembed(self.model, h0[s: s + self.cfg.chunk]).log_softmax(-1)  # unprompted
                    sums[i] += float(kl_unsteered_to_steered(ref, lp).double().sum())
            out.append(sums)
        return out

    def cost(self, kl_sums: np.ndarray) -> dict[str, float]:
        """The token-weighted mean KL and its bootstrap interval over passages."""
        den = self.n_tokens
        mean = float(kl_sums.sum() / den.sum())
        if len(den) < 2:
            return {"cost": mean, "cost_ci_low": mean, "cost_ci_high": mean}
        lo, hi = bootstrap_interval(len(den), lambda idx: kl_sums[idx].sum(1) / den[idx].sum(1),
                                    n_boot=self.cfg.n_boot, seed=self.cfg.seed)
        return {"cost": mean, "cost_ci_low": lo, "cost_ci_high": hi}


def _effect(at: Tensor, base: Tensor, cfg: PromptingConfig) -> dict[str, Any]:
    e = effect_vs_zero(at.double().numpy(), base.double().numpy(), n_boot=cfg.n_boot, seed=cfg.seed)
    return {"effect": e.mean, "ci_low": e.ci_low, "ci_high": e.ci_high, "n": e.n}


def _matched_rows(matched: Mapping[str, Any], vectors: Mapping[str, SteeringVector],
                  budgets: Sequence[float] | None) -> list[dict[str, Any]]:
    """The reached rows of a matched_cost result for the given vectors (and budgets)."""
    res = from_dict(matched)
    if res.kind != MATCHED_COST:
        raise ValueError(f"matched: expected a matched_cost result, got {res.kind!r}")
    rows = [r for r in res["rows"] if r.get("reached") and r.get("multiplier") is not None and r["vector"] in vectors]
    if budgets is not None:
        rows = [r for r in rows if any(math.isclose(r["budget"], b) for b in budgets)]
    return rows


# --------------------------------------------------------------------------- the baseline
def prompting_baseline(model: Model, pairs: Sequence[PreferencePair], train_pairs: Sequence[PreferencePair],
                       texts: Sequence[str] | None = None, behavior: str | None = None,
                       config: PromptingConfig | None = None, *, vectors: Mapping[str, SteeringVector] | None = None,
                       matched: Mapping[str, Any] | None = None, **options: Any) -> Result:
    """Effect and cost of asking for a behavior (an instruction, k shots), beside the vectors.

    Args:
        model: the model (unchanged by the call).
        pairs: held-out preference pairs (the effect).
        train_pairs: pairs the shots are drawn from (disjoint from ``pairs``).
        texts: neutral passages for the cost (default: the embedded neutral text).
        behavior: whose instructions (``workbench.data.instructions``); not needed with ``instructions``.
        config: the options (``PromptingConfig``).
        vectors: ``{label: vector}`` of ``matched``, for the prompt + vector rows.
        matched: a ``matched_cost`` result of the same pairs: its reached rows become ``vector`` rows,
            and with ``vectors`` each gets an ``instruction+<label>`` row (prompt and vector together).
        options: ``PromptingConfig`` fields given as keywords.

    Returns:
        A ``prompting`` result: ``rows`` (``COLUMNS``: one per method, direction, k, and for the vector
        rows budget and multiplier), ``instructions`` (the text of each direction, verbatim), ``shots``
        (the sources of the shots of each k), the system prompt and the sizes.

    Raises:
        ValueError: no pairs, no training pairs for the shots, no instructions for ``behavior``, or a
            ``matched`` result of another kind.

    Example:
        >>> res = prompting_baseline(model, test, train, behavior="power-seeking", ks=(1, 4), n_boot=200)
        >>> res.table()[["method", "direction", "k", "cost", "effect"]]
    """
    cfg = with_options(PromptingConfig, config, options, "prompting_baseline")
    pairs = check_pairs(pairs)
    train_pairs = check_pairs(train_pairs, "train_pairs") if cfg.ks else list(train_pairs or [])
    if cfg.ks and len(train_pairs) < max(cfg.ks):
        raise ValueError(f"train_pairs: {len(train_pairs)} pair(s), fewer than the {max(cfg.ks)} shots asked for")
    texts = check_texts(texts)
    if cfg.instructions is not None:
        instructions = {GOALS[d]: cfg.instructions[GOALS[d]] for d in cfg.directions}
    elif behavior is not None:
        instructions = behavior_instructions(behavior)
    else:
        raise ValueError("behavior: give the behavior whose instructions to use, or instructions={...}")
    vectors = dict(vectors or {})
    vec_rows = _matched_rows(matched, vectors, cfg.budgets) if matched is not None else []
    for v in vectors.values():
        v.check_compatible(model)

    system = cfg.system_prompt
    base_prompts, _ = prompts_and_answers(model, pairs, system)
    base = _logodds(model, base_prompts, pairs, [()], cfg)[0]  # (n_pairs,) unprompted
    passages = _Passages(model, texts, cfg)
    rows: list[dict[str, Any]] = []
    shots_of = {k: choose_shots(train_pairs, k, cfg.shot_seed) for k in cfg.ks}
    for d in cfg.directions:
        text = instructions[GOALS[d]]
        prompts, _ = prompts_and_answers(model, pairs, with_instruction(system, text))
        steered = [r for r in vec_rows if r["direction"] == d]
        conds: list[Condition] = [()] + [((vectors[r["vector"]], float(r["multiplier"])),) for r in steered]
        lo = _logodds(model, prompts, pairs, conds, cfg)  # (1 + n_steered, n_pairs)
        kls = passages.kl(instruction_context(model, text), conds)
        rows.append({"method": "instruction", "direction": d, "k": 0} | passages.cost(kls[0]) | _effect(lo[0], base, cfg))
        for c, r in enumerate(steered, start=1):
            rows.append({"method": f"instruction+{r['vector']}", "direction": d, "k": 0, "vector": r["vector"],
                         "budget": r["budget"], "multiplier": r["multiplier"]}
                        | passages.cost(kls[c]) | _effect(lo[c], base, cfg))
        for k in cfg.ks:
            shots = shots_of[k]
            prompts = [kshot_prompt(model, p.question, shots, d, system) for p in pairs]
            lo_k = _logodds(model, prompts, pairs, [()], cfg)[0]
            kl_k = passages.kl(kshot_context(model, shots, d, system))[0]
            rows.append({"method": "kshot", "direction": d, "k": k} | passages.cost(kl_k) | _effect(lo_k, base, cfg))
    for r in vec_rows:  # the vectors alone, as matched_cost measured them
        rows.append({"method": r["vector"], "direction": r["direction"], "k": 0, "vector": r["vector"],
                     "budget": r["budget"], "multiplier": r["multiplier"], "cost": r["cost"],
                     "effect": r.get("effect"), "ci_low": r.get("effect_ci_low"), "ci_high": r.get("effect_ci_high"),
                     "n": (matched or {}).get("n_pairs")})
    table = pd.DataFrame(rows).reindex(columns=list(COLUMNS))
    return result(PROMPTING, model=getattr(model.cfg, "model_name", None), behavior=behavior,
                  instructions=instructions, system_prompt=system,
                  shots={str(k): [p.source for p in s] for k, s in shots_of.items()}, shot_seed=cfg.shot_seed,
                  n_pairs=len(pairs), n_train=len(train_pairs), n_texts=len(texts), max_tokens=cfg.max_tokens,
                  n_boot=cfg.n_boot, seed=cfg.seed, **dict(cfg.extra), rows=table)


def prompting_table(res: Mapping[str, Any]) -> pd.DataFrame:
    """A prompting result's rows as a readable table (from the saved result alone)."""
    df = pd.DataFrame(from_dict(res)["rows"])

    def fmt(v: Any, spec: str) -> str:
        return "-" if v is None or pd.isna(v) else format(v, spec)

    return pd.DataFrame({
        "method": df["method"], "direction": df["direction"].map(GOALS),
        "k": [fmt(k, "d") if k else "-" for k in df["k"]],
        "budget": [fmt(b, ".3g") for b in df["budget"]], "multiplier": [fmt(m, "+.3g") for m in df["multiplier"]],
        "cost (KL)": [fmt(c, ".3f") + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and not pd.isna(lo) else "")
                      for c, lo, hi in zip(df["cost"], df["cost_ci_low"], df["cost_ci_high"])],
        "effect [95 % CI]": [fmt(e, "+.2f") + (f" [{lo:+.2f}, {hi:+.2f}]" if lo is not None and not pd.isna(lo) else "")
                             for e, lo, hi in zip(df["effect"], df["ci_low"], df["ci_high"])],
        "n": [fmt(n, ".0f") for n in df["n"]],
    })


def with_prompting_points(matched: Mapping[str, Any], prompting: Mapping[str, Any]) -> Result:
    """A copy of a ``matched_cost`` result whose ``points`` also hold the prompting methods.

    Each prompting row becomes a point labelled ``prompt: instruction``, ``prompt: k-shot`` or
    ``prompt: instruction+<vector>`` with its direction, cost and effect (``effect_ci_low/high``); the
    ``multiplier`` of a point is its strength along the line the figure draws: ``±1`` for the
    instruction, ``±k`` for k shots, the vector's multiplier for prompt + vector; the instruction and
    the k shots also get the unprompted point (multiplier 0, cost 0, effect 0). The vector rows of the
    prompting result are the matched result's own and are not added again.
    """
    m = from_dict(matched)
    p = from_dict(prompting)
    if m.kind != MATCHED_COST:
        raise ValueError(f"matched: expected a matched_cost result, got {m.kind!r}")
    if p.kind != PROMPTING:
        raise ValueError(f"prompting: expected a prompting result, got {p.kind!r}")
    points = list(m["points"])
    zero_for: set[str] = set()
    for r in p["rows"]:
        method = r["method"]
        if method == "instruction":
            label, mult = "prompt: instruction", float(r["direction"])
        elif method == "kshot":
            label, mult = "prompt: k-shot", float(r["direction"] * r["k"])
        elif method.startswith("instruction+"):
            label, mult = f"prompt: {method}", float(r["multiplier"])
        else:
            continue
        if method in ("instruction", "kshot"):
            zero_for.add(label)
        points.append({"vector": label, "direction": int(r["direction"]), "multiplier": mult, "cost": r["cost"],
                       "kl": r["cost"], "effect": r["effect"], "effect_ci_low": r["ci_low"],
                       "effect_ci_high": r["ci_high"], "method": method, "k": r.get("k")})
    for label in sorted(zero_for):
        points.append({"vector": label, "direction": 0, "multiplier": 0.0, "cost": 0.0, "kl": 0.0, "effect": 0.0,
                       "effect_ci_low": 0.0, "effect_ci_high": 0.0, "method": label.split(": ", 1)[1], "k": 0})
    return from_dict(dict(m) | {"points": points, "prompting": {"instructions": p.get("instructions"),
                                                               "behavior": p.get("behavior")}})


__all__ = ["COLUMNS", "GOALS", "PromptingConfig", "choose_shots", "instruction_context", "kshot_context",
           "kshot_prompt", "prompting_baseline", "prompting_table", "with_instruction", "with_prompting_points"]
