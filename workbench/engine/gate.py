"""The condition of conditional activation steering (CAST): steer a prompt only when it is "about" a topic.

Conditional activation steering (Lee et al. 2024, arXiv 2409.05907; IBM's ``activation-steering``
library) adds a behavior vector only to prompts whose hidden state at a *condition* hook matches a
*condition vector* ``c``. The rule, as IBM's implementation computes it:

* ``h`` is the mean over the prompt's tokens of the activation at the condition hook (padding
  excluded), taken on the prompt pass, before any steering (the condition hook lies at or before every
  gated vector's hook, so ``h`` is the unsteered model's);
* the score is ``cos(h, tanh(P h))`` with ``P = c c^T / (c . c)``, the projection onto ``c``;
* the condition holds when the score is above the threshold (``comparator="above"``; IBM's
  ``condition_comparator_threshold_is="smaller"``) or below it (``"below"``; IBM's ``"larger"``).

A ``SteeringCondition`` is a frozen dataclass (vector, hook, threshold, comparator) saved like a
``SteeringVector``: ``condition.safetensors`` (one tensor, key ``"vector"``) and ``condition.json`` (the
rest and the tensor file's SHA-256), committed together. ``steer(..., condition=...)`` and
``generate(..., condition=...)`` (``workbench.engine.steering``) apply it per batch row: a row whose
condition does not hold runs exactly as unsteered, one whose condition holds exactly as steered.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from safetensors.torch import load as load_safetensors
from torch import Tensor

from workbench.core.artifacts import artifact_read_lock, recover_artifact, write_artifact
from workbench.core.backend import Model, is_bridge
from workbench.core.io import json_text, read_safetensors_header, safetensors_bytes
from workbench.core.vector import full_hook_name, parse_hook_name

CONDITION_FILE = "condition.safetensors"
CONDITION_META = "condition.json"
COMPARATORS = ("above", "below")
#: Order of the hook points inside a block (an earlier one is computed first).
_POINT_ORDER = {"hook_resid_pre": 0, "hook_attn_out": 1, "hook_resid_mid": 2, "hook_mlp_out": 3,
                "hook_resid_post": 4}


def hook_order(hook_name: str) -> tuple[int, int]:
    """Where a block hook fires in the forward pass: ``(layer, point)``; smaller fires first."""
    layer, point = parse_hook_name(hook_name)
    return layer, _POINT_ORDER[point]


@dataclass(frozen=True, eq=False)
class SteeringCondition:
    """A CAST condition: a direction at a hook, a threshold on the prompt's score and a comparator.

    Attributes:
        vector: the condition direction ``c``, shape ``(d_model,)``.
        hook_name: full hook name where the prompt's activation is read, e.g. ``"blocks.6.hook_resid_pre"``.
        threshold: the score's threshold.
        comparator: ``"above"`` (holds when score > threshold) or ``"below"`` (score < threshold).
        layer: block index (parsed from ``hook_name`` when omitted).
        model_name: the model it was made on.
        metadata: anything else (topic, F1 of the grid search ...).

    Example:
        >>> cond = SteeringCondition(c, "blocks.6.hook_resid_pre", threshold=0.02)
        >>> with steer(model, vec, 1.0, condition=cond):
        ...     logits = model(tokens)  # rows whose prompt fails the condition run unsteered
    """

    vector: Float[Tensor, " d_model"]
    hook_name: str
    threshold: float = 0.0
    comparator: Literal["above", "below"] = "above"
    layer: int | None = None
    model_name: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.vector, Tensor) or self.vector.ndim != 1 or self.vector.numel() == 0:
            shape = tuple(self.vector.shape) if isinstance(self.vector, Tensor) else type(self.vector).__name__
            raise ValueError(f"condition vector must be a (d_model,) tensor, got {shape}")
        if not torch.isfinite(self.vector.float()).all() or float(self.vector.float().norm()) == 0:
            raise ValueError("condition vector must be finite and non-zero")
        layer, _ = parse_hook_name(self.hook_name)
        if self.layer is None:
            object.__setattr__(self, "layer", layer)
        elif int(self.layer) != layer:
            raise ValueError(f"condition layer={self.layer} disagrees with hook_name {self.hook_name!r}")
        if self.comparator not in COMPARATORS:
            raise ValueError(f"comparator must be 'above' or 'below', got {self.comparator!r}")
        threshold = float(self.threshold)
        if threshold != threshold:
            raise ValueError("condition threshold is NaN")
        object.__setattr__(self, "threshold", threshold)
        object.__setattr__(self, "vector", self.vector.detach())

    @property
    def d_model(self) -> int:
        return int(self.vector.shape[0])

    def with_threshold(self, threshold: float, comparator: str | None = None) -> SteeringCondition:
        """A copy with another threshold (and comparator)."""
        return replace(self, threshold=threshold, comparator=comparator or self.comparator)

    def check_compatible(self, model: Model) -> None:
        """Raise a one-line ``ValueError`` if the condition cannot be read from ``model``."""
        d_model = int(model.cfg.d_model)
        if self.d_model != d_model:
            raise ValueError(f"condition vector has d_model {self.d_model} but model {model.cfg.model_name!r} "
                             f"has d_model {d_model}")
        if self.hook_name not in model.hook_dict:
            raise ValueError(f"condition hook {self.hook_name!r} does not exist in model {model.cfg.model_name!r} "
                             f"({model.cfg.n_layers} layers: condition layer must be below {model.cfg.n_layers})")

    def check_before(self, hook_name: str) -> None:
        """Raise a ``ValueError`` unless the condition is read at or before ``hook_name`` (a gated vector's hook):
        the decision must be made on unsteered activations before the vector is added."""
        if hook_order(self.hook_name) > hook_order(hook_name):
            raise ValueError(f"condition hook {self.hook_name} comes after the steered hook {hook_name}: the "
                             "condition must be read at or before every gated vector's hook")

    def scores(self, means: Float[Tensor, "batch d_model"]) -> Float[Tensor, " batch"]:
        """CAST's score ``cos(h, tanh(P h))`` of prompt-mean activations ``h`` (IBM's ``activation-steering``)."""
        return cast_scores(means, self.vector)

    def holds(self, scores: Float[Tensor, " batch"]) -> Bool[Tensor, " batch"]:
        """Whether the condition holds for each score."""
        return scores > self.threshold if self.comparator == "above" else scores < self.threshold

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        return {"hook_name": self.hook_name, "layer": self.layer, "d_model": self.d_model,
                "threshold": self.threshold, "comparator": self.comparator, "model_name": self.model_name,
                "metadata": json.loads(json.dumps(dict(self.metadata), default=str))}

    def save(self, directory: str | Path) -> Path:
        """Write ``condition.safetensors`` and ``condition.json`` into ``directory``, all or nothing."""
        directory = Path(directory)
        data = safetensors_bytes({"vector": self.vector.float().cpu().contiguous()})
        meta_text = json_text(self.to_dict() | {"sha256": hashlib.sha256(data).hexdigest()})
        write_artifact(directory, {CONDITION_FILE: lambda p: p.write_bytes(data),
                                   CONDITION_META: lambda p: p.write_text(meta_text, encoding="utf-8")})
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> SteeringCondition:
        """Read a condition directory written by ``save``; a missing or bad file is a ``ValueError`` naming it."""
        directory = Path(directory)
        with artifact_read_lock(directory):
            recover_artifact(directory, (CONDITION_FILE, CONDITION_META))
            meta_path, tensor_path = directory / CONDITION_META, directory / CONDITION_FILE
            for p in (meta_path, tensor_path):
                if not p.is_file():
                    raise ValueError(f"{p}: missing (a condition directory holds {CONDITION_FILE} and "
                                     f"{CONDITION_META})")
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{meta_path}: not valid JSON ({exc})") from None
            if not isinstance(meta, dict) or not {"hook_name", "d_model", "threshold", "comparator"} <= set(meta):
                raise ValueError(f"{meta_path}: expected an object with hook_name, d_model, threshold, comparator")
            header = read_safetensors_header(tensor_path, ValueError, dtypes=("F32", "F16", "BF16", "F64"))
            if set(header) != {"vector"} or header["vector"]["shape"] != [meta["d_model"]]:
                raise ValueError(f"{tensor_path}: expected one tensor 'vector' of shape ({meta['d_model']},)")
            raw = tensor_path.read_bytes()
        if "sha256" in meta and hashlib.sha256(raw).hexdigest() != meta["sha256"]:
            raise ValueError(f"{tensor_path}: checksum does not match {meta_path} (corrupt or mixed files)")
        try:
            return cls(vector=load_safetensors(raw)["vector"].to(device), hook_name=meta["hook_name"],
                       threshold=meta["threshold"], comparator=meta["comparator"], layer=meta.get("layer"),
                       model_name=meta.get("model_name"), metadata=meta.get("metadata") or {})
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{meta_path}: {exc}") from None


def cast_scores(means: Float[Tensor, "batch d_model"], vector: Float[Tensor, " d_model"]) -> Float[Tensor, " batch"]:
    """``cos(h, tanh(P h))`` per row, ``P = c c^T / (c . c)``: CAST's condition score (in float32)."""
    h = means.float()  # (batch, d_model)
    c = vector.to(device=h.device, dtype=torch.float32)
    coef = (h @ c) / (c @ c)  # (batch,): P h = coef * c
    projected = torch.tanh(coef[:, None] * c[None, :])  # (batch, d_model)
    return torch.nn.functional.cosine_similarity(h, projected, dim=-1)


def masked_mean(act: Float[Tensor, "batch pos d_model"],
                mask: Bool[Tensor, "batch pos"] | None) -> Float[Tensor, "batch d_model"]:
    """The mean over positions (those of ``mask``, default all) of each row's activation, in float32."""
    if mask is None:
        return act.float().mean(dim=1)
    if mask.shape != act.shape[:2]:
        raise ValueError(f"condition_mask has shape {tuple(mask.shape)} but the activation at the condition hook "
                         f"has (batch, pos) = {tuple(act.shape[:2])}")
    w = mask.to(device=act.device, dtype=torch.float32).unsqueeze(-1)  # (batch, pos, 1)
    return (act.float() * w).sum(1) / w.sum(1).clamp_min(1.0)


class Gate:
    """The per-row decision of one ``SteeringCondition`` inside ``steer``/``generate``.

    The hook at the condition's hook point computes each row's decision from the prompt's activation;
    with ``sticky`` (``generate``) the first forward (the prompt pass) decides and later forwards, which
    see only new tokens under the KV cache, reuse the decision; otherwise every forward decides anew.
    """

    def __init__(self, condition: SteeringCondition, mask: Bool[Tensor, "batch pos"] | None = None,
                 sticky: bool = False) -> None:
        self.condition, self.mask, self.sticky = condition, mask, sticky
        self.open: Tensor | None = None  # (batch,) bool, the latest decision
        self.scores: Tensor | None = None  # (batch,) the latest scores

    def on_condition(self, act: Float[Tensor, "batch pos d_model"], hook: Any) -> None:  # noqa: ARG002
        if self.sticky and self.open is not None:
            return
        mask = self.mask
        if self.sticky and mask is not None and mask.shape[1] != act.shape[1]:
            raise ValueError(f"condition_mask covers {mask.shape[1]} positions but the prompt pass has {act.shape[1]}")
        self.scores = self.condition.scores(masked_mean(act, mask))
        self.open = self.condition.holds(self.scores)

    def apply(self, act: Tensor, steered: Tensor) -> Tensor:
        """``steered`` on open rows, ``act`` itself on closed ones (bit for bit)."""
        if self.open is None:
            raise RuntimeError(f"the condition at {self.condition.hook_name} did not run before a gated vector")
        if self.open.shape[0] != act.shape[0]:
            raise ValueError(f"the condition decided {self.open.shape[0]} rows but the activation has {act.shape[0]}")
        return torch.where(self.open.to(act.device).view(-1, 1, 1), steered, act)


@torch.no_grad()
def prompt_means(model: Model, prompts: Sequence[str], hook_names: Sequence[str],
                 ) -> dict[str, Float[Tensor, "n d_model"]]:
    """Each prompt's mean activation (over its tokens, as ``model.to_tokens`` makes them) at each hook, unsteered.

    One unpadded forward per prompt, stopped after the last hook's block, so the means are exactly those
    a gate computes on the prompt alone.
    """
    for name in hook_names:
        if name not in model.hook_dict:
            raise ValueError(f"hook {name!r} does not exist in model {model.cfg.model_name!r} "
                             f"({model.cfg.n_layers} layers)")
    stop = max(hook_order(n)[0] for n in hook_names) + 1
    if is_bridge(model):  # the bridge runs every block whatever stop_at_layer says
        stop = model.cfg.n_layers
    out: dict[str, list[Tensor]] = {n: [] for n in hook_names}

    def grab(act: Tensor, hook: Any, key: str) -> None:  # noqa: ARG001 (a bridge names its hook by an alias)
        out[key].append(act[0].float().mean(0))

    for prompt in prompts:
        tokens = model.to_tokens(prompt)  # (1, pos)
        model.run_with_hooks(tokens, fwd_hooks=[(n, partial(grab, key=n)) for n in hook_names],
                             stop_at_layer=stop if stop < model.cfg.n_layers else None)
    d = int(model.cfg.d_model)
    return {n: torch.stack(v) if v else torch.zeros(0, d) for n, v in out.items()}


def condition_scores(model: Model, condition: SteeringCondition, prompts: Sequence[str]) -> Float[Tensor, " n"]:
    """CAST's score of each prompt (unsteered, one prompt at a time); ``condition.holds(scores)`` gates them."""
    condition.check_compatible(model)
    return condition.scores(prompt_means(model, prompts, [condition.hook_name])[condition.hook_name])


def condition_hook(layer: int, hook: str = "resid_pre") -> str:
    """The full hook name of a condition at ``layer`` (``"blocks.6.hook_resid_pre"``)."""
    return full_hook_name(layer, hook)


__all__ = ["COMPARATORS", "Gate", "SteeringCondition", "cast_scores", "condition_hook", "condition_scores",
           "hook_order", "masked_mean", "prompt_means"]
