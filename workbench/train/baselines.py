"""Mean-difference baselines: CAA, ActAdd and PCA steering vectors, from one multi-layer pass.

* **CAA** (contrastive activation addition, Rimsky et al. 2023, arXiv 2312.06681): the mean over
  preference pairs of ``act(prompt + matching) - act(prompt + not_matching)`` at one hook point.
* **ActAdd** (activation addition, Turner et al. 2023, arXiv 2308.10248): the difference of the
  activations of ONE pair of prompts (``"Love"`` - ``"Hate"``).
* **PCA**: the first principal component of the per-pair differences (as repeng's ``pca_diff``),
  with its sign and norm fixed by the mean difference.
* **Coherence predictor** (Braun et al. 2025, arXiv 2505.22637): the mean cosine of each pair's
  activation difference to the mean difference (``difference_coherence``), recorded in every CAA
  and PCA vector's ``metadata``; ``pair_coherence`` computes it for a vector trained otherwise (BiPO).

``extract_activations`` reads every requested layer in ONE forward pass per batch: a hook at each
requested hook point reduces the activation to one ``d_model`` vector per sequence (by a position
rule) and stores it in fp32, and the forward pass stops after the deepest requested block. A
30-layer sweep therefore costs one partial forward pass instead of thirty (``bench/sweep_speed.py``).
The matching and not-matching sequences of a batch of pairs run together in one right-padded batch
with an explicit attention mask (``workbench.engine.items.pad_rows``).

Position rules (where a sequence ``prompt + answer`` is read):

* ``"answer_mean"``: mean over the answer tokens (the default; free-text answers as in BiPO's data);
* ``"last"``: the last token of the sequence (the last answer token);
* ``"ab_letter"``: the A/B letter inside the answer, CAA style (answers ``"(A)"``/``"(B)"``; CAA
  reads the ``A`` of ``"(A)"``);
* ``"prompt_last"``: the last prompt token. Under causal attention it cannot see the answer, so it is
  the same for both answers of a pair: useful for probing prompts with ``extract_activations``, and
  refused by the mean-difference functions (the difference would be zero).

Prompts are the model's chat template around the question with ``DEFAULT_SYSTEM_PROMPT`` (BiPO's
official runs); ``system_prompt=None`` drops the system turn. The end-of-turn token is NOT appended
to answers unless ``append_end_of_turn=True`` (then ``"last"`` reads the end-of-turn token).

Bounded memory: every sequence is cut to ``max_length`` tokens by the scoring engine's one rule
(``workbench.engine.items.prompt_cut``: prompts lose tokens from the left, the two answers of a pair
the same number, answers are never cut; default ``DEFAULT_MAX_LENGTH``, as the trainer and the
scorer), and every batch is tokenized and its forward pass's memory estimated
(``workbench.engine.items.forward_bytes``) before the first pass runs: a pair that would need more
memory than the machine has is an error naming its source (``file:line``), before any work.
"""

from __future__ import annotations

import logging
import operator
import re
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from workbench.core.backend import Model
from workbench.core.prompts import DEFAULT_SYSTEM_PROMPT, end_of_turn, format_chat  # BiPO's official system prompt
from workbench.core.vector import SteeringVector, full_hook_name, parse_hook_name
from workbench.data.pairs import PreferencePair, check_pairs, fingerprint
from workbench.engine.forward import Stream, assemble
from workbench.engine.items import (DEFAULT_MAX_LENGTH, AnswerTooLongError, Items, TokenizedBatch,
                                    check_forward_memory, encode_rows, pad_rows, prompt_cut)
from workbench.engine.packed import packable

logger = logging.getLogger(__name__)

Position = Literal["answer_mean", "last", "ab_letter", "prompt_last"]
POSITIONS: tuple[str, ...] = ("answer_mean", "last", "ab_letter", "prompt_last")
# "(A)" anywhere in the answer; else a bare leading capital letter ("A", "B) yes", "A.")
_LETTER_IN_PARENS = re.compile(r"\(([A-Za-z])\)")
_LEADING_LETTER = re.compile(r"\s*([A-Z])(?![A-Za-z])")

Activations = dict[int, tuple[Float[Tensor, "n d_model"], Float[Tensor, "n d_model"]]]


# --------------------------------------------------------------------------- checks
def _check_position(position: str) -> None:
    if position not in POSITIONS:
        raise ValueError(f"unknown position rule {position!r}; valid: {', '.join(POSITIONS)}")


def _as_layer(layer: Any) -> int:
    if isinstance(layer, bool):
        raise ValueError(f"layer must be an int, got {layer!r}")
    try:
        return operator.index(layer)  # int, numpy integer, 0-d integer tensor
    except TypeError:
        raise ValueError(f"layer must be an int, got {layer!r}") from None


def _check_layers(model: Model, layers: Sequence[int] | int, hook: str) -> list[int]:
    if hook.startswith("blocks."):
        raise ValueError(f"hook={hook!r}: give the hook point inside the block ('resid_post', 'resid_pre', "
                         "'attn_out' ...), not a full hook name; the layer comes from `layers`")
    try:
        layers = [operator.index(layers)]  # one layer
    except TypeError:
        layers = [_as_layer(x) for x in layers]
    if not layers:
        raise ValueError("layers is empty: give at least one layer index")
    n = model.cfg.n_layers
    for layer in layers:
        if not 0 <= layer < n:
            raise ValueError(f"layer {layer!r} is out of range for model {model.cfg.model_name!r} "
                             f"({n} layers: 0..{n - 1})")
        name = full_hook_name(layer, hook)
        if name not in model.hook_dict:
            raise ValueError(f"hook {name!r} does not exist in model {model.cfg.model_name!r}")
    return sorted(set(layers))


def _check_max_length(max_length: Any) -> None:
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"max_length={max_length!r}: must be a positive integer or None (no bound)")


def _where(pairs: Sequence[PreferencePair], i: int) -> str:
    """A pair's source (``path:line``, ``behavior:index``), else ``pairs[i]``."""
    return getattr(pairs[i], "source", None) or f"pairs[{i}]"


def _encode_pairs(model: Model, pairs: Sequence[PreferencePair], system_prompt: str | None, eot: str,
                  max_length: int | None) -> list[tuple[list[int], list[int]]]:
    """Rows ``[matching_0, not_matching_0, matching_1, ...]`` under the engine's rule (both answers of a
    pair cut to the same prompt); an answer too long names its pair's source."""
    prompts = [format_chat(model, p.question, system_prompt) for p in pairs]
    flat_p = [q for q in prompts for _ in (0, 1)]
    flat_a = [a + eot for p in pairs for a in (p.matching, p.not_matching)]
    try:
        return encode_rows(model, flat_p, flat_a, max_length, groups=[i for i in range(len(pairs)) for _ in (0, 1)])
    except AnswerTooLongError as exc:
        i, which = divmod(exc.index, 2)
        raise AnswerTooLongError(exc.index, exc.n_tokens, exc.max_length,
                                 where=f"{_where(pairs, i)}: the {('matching', 'not_matching')[which]} answer") from None


def _check_batches_memory(model: Model, pairs: Sequence[PreferencePair], rows: list[tuple[list[int], list[int]]],
                          batches: list[list[int]], max_length: int | None, batch_size: int) -> None:
    """Every batch's forward-pass memory against what is free, before the first pass; names the longest pair."""
    def length(i: int) -> int:
        return max(len(p) + len(a) for p, a in rows[2 * i: 2 * i + 2])

    for idx in batches:
        longest = max(idx, key=length)
        advice = (f"lower max_length={max_length}" if max_length is not None  # argument=value: the CLI names its flag
                  else f"give max_length= (the engine's default is {DEFAULT_MAX_LENGTH})")
        if len(idx) > 1:
            advice += f" or batch_size={batch_size}"
        check_forward_memory(model, 2 * len(idx), length(longest), _where(pairs, longest), advice)


# --------------------------------------------------------------------------- positions
def _letter_index(model: Model, answer: str, where: str) -> int:
    """Index (within the answer's own tokens) of the token holding the A/B letter."""
    m = _LETTER_IN_PARENS.search(answer) or _LEADING_LETTER.match(answer)
    if m is None:
        raise ValueError(f"position 'ab_letter': {where} {answer[:60]!r} has no answer letter like '(A)'")
    char = m.start(1)
    enc = model.tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
    for k, (start, end) in enumerate(enc["offset_mapping"]):
        if start <= char < end:
            return k
    raise ValueError(f"position 'ab_letter': no token of {where} {answer!r} covers its letter "
                     f"(offsets {enc['offset_mapping']})")


def _read_positions(batch: TokenizedBatch, position: str, letters: Sequence[int]) -> Tensor | None:
    """``(batch,)`` position read in each row, or None for ``"answer_mean"``."""
    if position == "answer_mean":
        return None
    if position == "last":
        return batch.lengths - 1
    if position == "prompt_last":
        return batch.prompt_lengths - 1
    return batch.prompt_lengths + torch.tensor(letters)  # ab_letter


def _reduce(act: Float[Tensor, "batch pos d_model"], batch: TokenizedBatch,
            positions: Tensor | None) -> Float[Tensor, "batch d_model"]:
    """One fp32 vector per row: the activation at ``positions``, or the mean over answer tokens."""
    if positions is not None:
        return act[torch.arange(act.shape[0], device=act.device), positions.to(act.device)].float()
    mask = batch.answer_mask.to(act.device)  # (batch, pos)
    total = (act.float() * mask[..., None]).sum(1)  # (batch, d_model)
    return total / mask.sum(1, keepdim=True).float()


def _record(act: Tensor, hook: Any, *, name: str, store: dict[str, Tensor], batch: TokenizedBatch,  # noqa: ARG001
            positions: Tensor | None) -> None:
    store[name] = _reduce(act, batch, positions).cpu()  # keyed by the requested name (a bridge's hook.name differs)


# --------------------------------------------------------------------------- extraction
@torch.no_grad()
def extract_activations(model: Model, pairs: Sequence[PreferencePair], layers: Sequence[int] | int,
                        hook: str = "resid_post", position: Position = "answer_mean",
                        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, batch_size: int = 8,
                        progress: bool = True, append_end_of_turn: bool = False,
                        max_length: int | None = DEFAULT_MAX_LENGTH) -> Activations:
    """Per-pair activations of both answers at every requested layer, in one pass per batch.

    A residual-stream hook point (``resid_pre``, ``resid_post``) of a model whose blocks the scoring
    engine runs packed (``workbench.engine.packed``) is read from the engine's stream: each prompt once
    for both answers, no padding (the same activations up to float rounding, about twice as fast on
    the embedded model). Other hook points, other models and a model with hooks attached run one hooked
    forward pass per batch.

    Args:
        model: any ``HookedTransformer``; hooks the caller attached (``steer``) take effect.
        pairs: preference pairs (``question``, ``matching``, ``not_matching``).
        layers: block indices; the same hook point is read in each.
        hook: hook point in the block (``"resid_post"``, ``"resid_pre"``, ``"attn_out"`` ...).
        position: the position rule (module docstring).
        system_prompt: system turn of the chat prompt (``None``: none).
        batch_size: pairs per forward pass (each pass runs ``2 * batch_size`` sequences).
        progress: show a tqdm bar over batches.
        append_end_of_turn: append the model's end-of-turn string to every answer.
        max_length: cut prompts from the left so sequences have at most this many tokens (the
            engine's rule, the two answers of a pair cut alike; ``None``: no bound).

    Returns:
        ``{layer: (acts_matching, acts_not_matching)}``, each ``(n_pairs, d_model)`` fp32 on CPU, in
        the order of ``pairs``.

    Raises:
        AnswerTooLongError: an answer longer than ``max_length`` (naming the pair's source).
        InputTooLargeError: a batch whose forward pass needs more memory than is free (naming the
            longest pair's source); both before any forward pass.

    Example:
        >>> acts = extract_activations(model, pairs, layers=range(30))
        >>> acts[14][0].shape
        torch.Size([100, 576])
    """
    pairs = check_pairs(pairs)
    _check_position(position)
    layers = _check_layers(model, layers, hook)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _check_max_length(max_length)
    names = {full_hook_name(layer, hook): layer for layer in layers}
    eot = end_of_turn(model) if append_end_of_turn else ""
    n, d = len(pairs), model.cfg.d_model
    out = {layer: (torch.empty(n, d), torch.empty(n, d)) for layer in layers}
    # longest first, so the first batch shows the memory peak and padding stays small
    order = sorted(range(n), key=lambda i: -(len(pairs[i].question)
                                           + max(len(pairs[i].matching), len(pairs[i].not_matching))))
    letters: dict[tuple[int, int], int] = {}
    if position == "ab_letter":  # checked for every answer before any forward pass
        for i, p in enumerate(pairs):
            letters[i, 0] = _letter_index(model, p.matching + eot, f"pairs[{i}].matching")
            letters[i, 1] = _letter_index(model, p.not_matching + eot, f"pairs[{i}].not_matching")
    # every row tokenized, every batch's memory estimated, before the first forward pass
    rows = _encode_pairs(model, pairs, system_prompt, eot, max_length)
    batches = [order[s: s + batch_size] for s in range(0, n, batch_size)]
    _check_batches_memory(model, pairs, rows, batches, max_length, batch_size)
    stop = max(layers) + 1
    device = model.cfg.device
    # the residual stream read where it enters a block: the engine's packed blocks, each prompt once for both answers
    point = hook.removeprefix("hook_")  # "resid_post" or "hook_resid_post"
    streamed = point in ("resid_pre", "resid_post") and packable(model)
    for idx in tqdm(batches, desc="activations", disable=not progress, total=len(batches)):
        if streamed and _streamed_batch(model, rows, idx, names, point, position, letters, out):
            continue
        batch = pad_rows(model, [rows[2 * i] for i in idx] + [rows[2 * i + 1] for i in idx])
        positions = _read_positions(batch, position, [letters.get((i, j), 0) for j in (0, 1) for i in idx])
        batch = batch.to(device)
        store: dict[str, Tensor] = {}
        fn = partial(_record, store=store, batch=batch, positions=positions)
        with model.hooks(fwd_hooks=[(name, partial(fn, name=name)) for name in names]):
            model(batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=stop)
        k = len(idx)
        for name, layer in names.items():
            out[layer][0][idx] = store[name][:k]
            out[layer][1][idx] = store[name][k:]
    return out


def _streamed_batch(model: Model, rows: list[tuple[list[int], list[int]]], idx: list[int], names: dict[str, int],
                    hook: str, position: str, letters: dict[tuple[int, int], int], out: Activations) -> bool:
    """``extract_activations`` of the pairs ``idx`` from the engine's residual stream (``Stream``: packed
    blocks, each prompt once for both answers), written into ``out``; False (nothing written) where a
    pair's two rows do not share their prompt, or a prompt or an answer is empty (the hooked pass reads those)."""
    if any(rows[2 * i][0] != rows[2 * i + 1][0] or not (rows[2 * i][0] and rows[2 * i][1] and rows[2 * i + 1][1])
           for i in idx):
        return False
    items = Items.from_ids([rows[2 * i][0] for i in idx], [[rows[2 * i][1], rows[2 * i + 1][1]] for i in idx])
    batch = assemble(model, items, range(len(idx)))
    stream = Stream(model, batch)
    p_last = batch.m_p.sum(1) - 1  # (b,)
    a_len = batch.m_a.sum(1)  # (2b,) answers item-major: matching, not matching of each pair
    rows_a = torch.arange(len(a_len), device=a_len.device)
    for layer in sorted(set(names.values())):  # going up: each block runs once
        x_p, x_a = stream.at(layer + (hook == "resid_post"))
        if position == "answer_mean":
            mask = batch.m_a[..., None].float()
            acts = (x_a.float() * mask).sum(1) / mask.sum(1)
        elif position == "last":
            acts = x_a[rows_a, a_len - 1].float()
        elif position == "prompt_last":
            acts = x_p[batch.owner, p_last[batch.owner]].float()
        else:  # ab_letter: the letter's position inside each answer
            at = torch.tensor([letters[i, j] for i in idx for j in (0, 1)], device=x_a.device)
            acts = x_a[rows_a, at].float()
        acts = acts.view(len(idx), 2, -1).cpu()
        out[layer][0][idx] = acts[:, 0]
        out[layer][1][idx] = acts[:, 1]
    return True


def _config(position: str, system_prompt: str | None, n: int, hook: str, append_end_of_turn: bool,
            **extra: Any) -> dict[str, Any]:
    return {"position": position, "system_prompt": system_prompt, "n": n, "hook": hook,
            "append_end_of_turn": append_end_of_turn, **extra}


def _refuse_prompt_last(position: str) -> None:
    if position == "prompt_last":
        raise ValueError("position 'prompt_last' reads the last prompt token, which (causal attention) "
                         "cannot see the answer: matching and not-matching activations are identical and "
                         "their difference is zero. Use extract_activations to probe prompts, or another "
                         f"position rule ({', '.join(p for p in POSITIONS if p != 'prompt_last')})")


def mean_difference_vectors(model: Model, pairs: Sequence[PreferencePair],
                            layers: Sequence[int] | int, hook: str = "resid_post",
                            position: Position = "answer_mean",
                            system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, batch_size: int = 8,
                            progress: bool = True, append_end_of_turn: bool = False,
                            max_length: int | None = DEFAULT_MAX_LENGTH) -> dict[int, SteeringVector]:
    """CAA vectors ``mean(act(matching) - act(not_matching))`` at several layers from one pass.

    Arguments as ``extract_activations``. Returns ``{layer: SteeringVector}`` (method ``"caa"``,
    fp32). ``metadata`` holds ``n_pairs``, ``position``, ``mean_activation_norm`` (mean L2 norm
    of the activations read, to put the vector's norm in proportion) and the coherence predictor
    (``difference_coherence``: ``coherence``, ``coherence_std``).

    Example:
        >>> vecs = mean_difference_vectors(model, load_behavior("power-seeking"), range(30))
        >>> vecs[14].hook_name
        'blocks.14.hook_resid_post'
    """
    _refuse_prompt_last(position)
    pairs = check_pairs(pairs)
    acts = extract_activations(model, pairs, layers, hook=hook, position=position, system_prompt=system_prompt,
                               batch_size=batch_size, progress=progress, append_end_of_turn=append_end_of_turn,
                               max_length=max_length)
    fp = fingerprint(pairs)
    config = _config(position, system_prompt, len(pairs), hook, append_end_of_turn, max_length=max_length)
    out = {}
    for layer, (pos, neg) in acts.items():
        vec = (pos - neg).mean(0)  # (d_model,) fp32
        norm = float(torch.cat([pos, neg]).norm(dim=1).mean())
        out[layer] = SteeringVector(vec, full_hook_name(layer, hook), model_name=model.cfg.model_name,
                                    method="caa", config=config, data_fingerprint=fp,
                                    metadata={"n_pairs": len(pairs), "position": position,
                                              "mean_activation_norm": norm} | difference_coherence(pos - neg))
    return out


def caa(model: Model, pairs: Sequence[PreferencePair], layer: int, hook: str = "resid_post",
        position: Position = "answer_mean", **kwargs: Any) -> SteeringVector:
    """One CAA vector: ``mean_difference_vectors`` at a single layer (same keyword arguments).

    Example:
        >>> v = caa(model, pairs, layer=14, position="ab_letter")   # CAA's A/B data
    """
    if isinstance(layer, (list, tuple, range)):
        raise ValueError(f"layer must be one int, got {layer!r} (use mean_difference_vectors for several)")
    layer = _as_layer(layer)
    return mean_difference_vectors(model, pairs, [layer], hook=hook, position=position, **kwargs)[layer]


# --------------------------------------------------------------------------- PCA
def first_principal_component(diffs: Float[Tensor, "n d_model"], center: bool = False,
                              ) -> tuple[Float[Tensor, " d_model"], float]:
    """The unit first principal direction of ``diffs`` and the share of variance it explains.

    With ``center=False`` it is the top right-singular vector of ``diffs`` itself (the direction
    that best explains the differences, their shared mean included); with ``center=True`` the
    differences are centred first (sklearn's PCA, as repeng's ``pca_diff``), so the direction is
    the one along which pairs DISAGREE most around the mean. The sign is the SVD's (arbitrary).
    Computed in float64.
    """
    x = diffs.double()
    if center:
        x = x - x.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    energy = float((s ** 2).sum())
    share = float(s[0] ** 2) / energy if energy > 0 else 0.0
    return vh[0], share


def pca(model: Model, pairs: Sequence[PreferencePair], layer: int, hook: str = "resid_post",
        position: Position = "answer_mean", center: bool = False, **kwargs: Any) -> SteeringVector:
    """First principal component of the per-pair differences ``act(matching) - act(not_matching)``.

    Conventions: uncentred by default (``center``: see ``first_principal_component``; repeng's
    ``pca_diff`` centres); the sign is chosen so that the vector has a positive dot product with
    the mean difference (the CAA vector); the vector is scaled to the norm of the mean difference,
    so multipliers mean the same for ``pca`` and ``caa``. ``metadata`` holds the explained-variance
    share and the cosine with the mean difference. The other keyword arguments (``system_prompt``,
    ``batch_size``, ``progress``, ``append_end_of_turn``, ``max_length``) are ``extract_activations``'s,
    as for ``caa``.

    Example:
        >>> v = pca(model, pairs, layer=14, center=True, batch_size=4)
    """
    _refuse_prompt_last(position)
    pairs = check_pairs(pairs)
    layer = _as_layer(layer)
    system_prompt = kwargs.get("system_prompt", DEFAULT_SYSTEM_PROMPT)
    append_end_of_turn = kwargs.get("append_end_of_turn", False)
    max_length = kwargs.get("max_length", DEFAULT_MAX_LENGTH)
    pos, neg = extract_activations(model, pairs, [layer], hook=hook, position=position, **kwargs)[layer]
    diffs = pos - neg  # (n, d_model)
    mean = diffs.double().mean(0)
    direction, share = first_principal_component(diffs, center=center)
    dot = float(direction @ mean)
    if dot < 0:
        direction = -direction
    elif dot == 0:
        logger.warning("pca at %s: the first component is orthogonal to the mean difference; its sign "
                       "is arbitrary", full_hook_name(layer, hook))
    vec = (direction * mean.norm()).float()
    cos = float(torch.nn.functional.cosine_similarity(direction, mean, dim=0)) if mean.norm() > 0 else 0.0
    config = _config(position, system_prompt, len(pairs), hook, append_end_of_turn, center=center,
                     max_length=max_length)
    return SteeringVector(vec, full_hook_name(layer, hook), model_name=model.cfg.model_name, method="pca",
                          config=config, data_fingerprint=fingerprint(pairs),
                          metadata={"n_pairs": len(pairs), "position": position, "center": center,
                                    "explained_variance": share, "cosine_with_mean_difference": cos,
                                    "scale": "norm of the mean difference"} | difference_coherence(diffs))


# --------------------------------------------------------------------------- the coherence predictor
def difference_coherence(diffs: Float[Tensor, "n d_model"]) -> dict[str, float]:
    """How coherent per-pair activation differences are: their mean cosine to the mean difference.

    Braun et al. (2025, arXiv 2505.22637) find that this predicts how reliably a vector steers: when
    the pairs' differences point the same way, the mean difference steers most inputs; when they
    scatter, many inputs are not steered or are steered the wrong way. Computed in float64; a pair
    whose difference is zero counts as cosine 0.

    Returns:
        ``{"coherence": mean cosine, "coherence_std": its standard deviation over pairs}`` (NaN with
        no pair or a zero mean difference).
    """
    x = diffs.double()  # (n, d_model)
    mean = x.mean(0)  # (d_model,)
    if x.shape[0] == 0 or float(mean.norm()) == 0:
        return {"coherence": float("nan"), "coherence_std": float("nan")}
    cos = (x @ mean) / (x.norm(dim=1) * mean.norm()).clamp_min(torch.finfo(torch.float64).tiny)  # (n,)
    return {"coherence": float(cos.mean()), "coherence_std": float(cos.std(unbiased=False))}


def layer_coherence(model: Model, pairs: Sequence[PreferencePair], layers: Sequence[int] | int,
                    hook: str = "resid_post", position: Position = "answer_mean", **kwargs: Any,
                    ) -> dict[int, dict[str, float]]:
    """``difference_coherence`` of the training pairs' activation differences at every layer, in one pass per batch.

    Args:
        model, pairs, layers, hook, position: as ``extract_activations``.
        **kwargs: the other options of ``extract_activations`` (``system_prompt``, ``batch_size``,
            ``progress``, ``append_end_of_turn``, ``max_length``).

    Returns:
        ``{layer: {"coherence", "coherence_std"}}``.
    """
    _refuse_prompt_last(position)
    acts = extract_activations(model, pairs, layers, hook=hook, position=position, **kwargs)
    return {layer: difference_coherence(pos - neg) for layer, (pos, neg) in acts.items()}


def pair_coherence(model: Model, pairs: Sequence[PreferencePair], hook_name: str,
                   position: Position = "answer_mean", **kwargs: Any) -> dict[str, float]:
    """The coherence predictor of a vector trained at ``hook_name`` (``"blocks.14.hook_resid_post"``).

    For a vector not made from mean differences (BiPO, RePS): the trainer calls it on the same
    training pairs at the end of training and records the result in the vector's ``metadata``.
    Keyword arguments as ``layer_coherence``.

    Returns:
        ``{"coherence", "coherence_std", "coherence_position"}``.

    Example:
        >>> meta = pair_coherence(model, train_pairs, "blocks.14.hook_resid_post")
        >>> vector = vector.replace(metadata={**vector.metadata, **meta})
    """
    layer, hook = parse_hook_name(hook_name)
    return layer_coherence(model, pairs, [layer], hook=hook, position=position, **kwargs)[layer] | {
        "coherence_position": position}


# --------------------------------------------------------------------------- ActAdd
@torch.no_grad()
def actadd(model: Model, positive: str, negative: str, layer: int, hook: str = "resid_pre",
           position: Literal["last", "sum", "mean"] = "last", pad_text: str = " ",
           prepend_bos: bool | None = None, max_length: int | None = DEFAULT_MAX_LENGTH) -> SteeringVector:
    """ActAdd: ``act(positive) - act(negative)`` for one pair of raw prompts (no chat template).

    Args:
        model: the model.
        positive, negative: the two prompts, e.g. ``"Love"`` and ``"Hate"``.
        layer, hook: where to read (the paper injects at ``resid_pre``).
        position: ``"last"`` (the last token of each prompt, any lengths), or ``"sum"``/``"mean"``
            over positions of the per-position difference after padding the shorter prompt on the
            right with ``pad_text`` tokens to equal length (as the paper pads with spaces; the paper
            adds the whole per-position difference at the front positions, a vector at one hook is
            its sum or mean).
        pad_text: text of ONE token used for padding.
        prepend_bos: passed to ``model.to_tokens`` (``None``: the model's default).
        max_length: each prompt keeps at most its last ``max_length`` tokens (the engine's rule,
            ``prompt_cut``, for a prompt with no answer; ``None``: no bound). A prompt whose forward
            pass needs more memory than is free is refused before it runs, naming the argument.

    Returns:
        ``SteeringVector`` with method ``"actadd"``.

    Example:
        >>> v = actadd(model, "Love", "Hate", layer=6)
    """
    if position not in ("last", "sum", "mean"):
        raise ValueError(f"unknown ActAdd position {position!r}; valid: last, sum, mean")
    for arg, text in (("positive", positive), ("negative", negative)):
        if not isinstance(text, str) or not text:
            raise ValueError(f"{arg} must be a non-empty prompt string, got {text!r}")
    _check_max_length(max_length)
    layer = _as_layer(layer)
    _check_layers(model, [layer], hook)
    name = full_hook_name(layer, hook)
    toks = [model.to_tokens(t, prepend_bos=prepend_bos)[0] for t in (positive, negative)]
    toks = [t[prompt_cut(len(t), 0, max_length):] for t in toks]  # (pos,) each, cut from the left
    if position != "last":
        pad_ids = model.tokenizer(pad_text, add_special_tokens=False)["input_ids"]
        if len(pad_ids) != 1:
            raise ValueError(f"pad_text {pad_text!r} is {len(pad_ids)} tokens, not one")
        n = max(len(t) for t in toks)
        toks = [torch.cat([t, t.new_full((n - len(t),), pad_ids[0])]) for t in toks]
    for arg, t in zip(("positive", "negative"), toks):  # before the first forward pass
        check_forward_memory(model, 1, len(t), arg, f"lower max_length={max_length}" if max_length
                             else f"give max_length= (the engine's default is {DEFAULT_MAX_LENGTH})")
    acts = []
    for t in toks:  # one prompt at a time: no padding or mask is involved
        store: dict[str, Tensor] = {}

        def read(act: Tensor, hook: Any, store: dict[str, Tensor] = store) -> None:
            store["act"] = act[0].float().cpu()  # (pos, d_model)

        with model.hooks(fwd_hooks=[(name, read)]):
            tokens = t[None].to(model.cfg.device)  # (1, pos)
            model(tokens, attention_mask=torch.ones_like(tokens), stop_at_layer=layer + 1)
        acts.append(store["act"])
    if position == "last":
        vec = acts[0][-1] - acts[1][-1]
    else:
        diff = acts[0] - acts[1]  # (pos, d_model)
        vec = diff.sum(0) if position == "sum" else diff.mean(0)
    lengths = [len(t) for t in toks]
    return SteeringVector(vec, name, model_name=model.cfg.model_name, method="actadd",
                          config={"positive": positive, "negative": negative, "position": position,
                                  "hook": hook, "pad_text": pad_text, "prepend_bos": prepend_bos,
                                  "max_length": max_length},
                          data_fingerprint=fingerprint([PreferencePair("", positive, negative)]),
                          metadata={"n_tokens": lengths, "position": position})
