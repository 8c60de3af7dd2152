"""The steering vector: one direction added at one hook point of a ``HookedTransformer``.

A ``SteeringVector`` is a frozen dataclass holding the tensor, the full TransformerLens hook name
(``blocks.{L}.hook_resid_post`` and the like), the layer and the metadata that makes a result
reproducible: model, method (``bipo``, ``caa``, ``actadd``, ``pca`` ...), the training config, a
fingerprint of the data and the workbench version. Operations (``scaled``, ``normalized``, ``+``,
``to``) return new vectors; nothing mutates.

On disk a vector is a directory holding ``vector.safetensors`` (one tensor, key ``"vector"``) and
``vector.json`` (the metadata plus the tensor file's SHA-256), committed together (with any companion
file, e.g. a trained vector's ``history.json``) by one directory rename under the artifact's
one-writer lock (``workbench.core.artifacts.write_artifact``); loading reads under the same lock, shared, and
checks every field. Steering methods: BiPO (Cao et al. 2024, arXiv 2406.00045), CAA (Rimsky et al.
2023, arXiv 2312.06681), ActAdd (Turner et al. 2023, arXiv 2308.10248).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors.torch import load as load_safetensors
from torch import Tensor

from workbench.core.backend import Model
from workbench.core.artifacts import artifact_read_lock, recover_artifact, write_artifact
from workbench.core.io import json_text, read_safetensors_header, safetensors_bytes

__version__ = "0.1.0"

VECTOR_FILE = "vector.safetensors"
META_FILE = "vector.json"
FORMAT_VERSION = 1
#: Hook points inside block L where a d_model vector can be added.
BLOCK_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.(hook_[a-z_]+)$")
_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
_MAX_META_BYTES = 64 << 20
# vector.json: each field and the JSON types it may hold (None: null allowed)
_META_FIELDS: dict[str, tuple[type, ...]] = {
    "format_version": (int,), "hook_name": (str,), "layer": (int, type(None)), "d_model": (int,), "dtype": (str,),
    "model_name": (str, type(None)), "method": (str,), "config": (dict, type(None)),
    "data_fingerprint": (str, type(None)), "metadata": (dict, type(None)), "version": (str,), "sha256": (str,)}
_REQUIRED_META = ("hook_name", "d_model", "method")


class VectorFileError(ValueError):
    """A vector directory is missing a file or holds something invalid."""


class IncompatibleVectorError(ValueError):
    """A vector does not fit a model (d_model, hook name)."""


def full_hook_name(layer: int, hook: str = "resid_post") -> str:
    """Full hook name: ``full_hook_name(14)`` -> ``"blocks.14.hook_resid_post"``.

    ``hook`` may be given with or without the ``hook_`` prefix, or as a full name (returned as is).
    """
    if hook.startswith("blocks."):
        return hook
    hook = hook if hook.startswith("hook_") else f"hook_{hook}"
    if hook not in BLOCK_HOOKS:
        raise ValueError(f"unknown hook point {hook!r}; valid: {', '.join(h[5:] for h in BLOCK_HOOKS)}")
    return f"blocks.{int(layer)}.{hook}"


def parse_hook_name(name: str) -> tuple[int, str]:
    """``"blocks.14.hook_resid_post"`` -> ``(14, "hook_resid_post")``."""
    m = _HOOK_RE.match(name)
    if not m or m.group(2) not in BLOCK_HOOKS:
        raise ValueError(f"{name!r} is not a block hook name like 'blocks.14.hook_resid_post' "
                         f"(hook points: {', '.join(BLOCK_HOOKS)})")
    return int(m.group(1)), m.group(2)


def valid_hook_names(model: Model) -> list[str]:
    """Every hook name of ``model`` where a steering vector can be added."""
    return [f"blocks.{layer}.{h}" for layer in range(model.cfg.n_layers) for h in BLOCK_HOOKS
            if f"blocks.{layer}.{h}" in model.hook_dict]


def _json_safe(obj: Any) -> Any:
    """Metadata as plain JSON values (tuples to lists, dtypes and paths to strings)."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


@dataclass(frozen=True, eq=False)
class SteeringVector:
    """A steering vector and where and how it was made.

    Attributes:
        vector: the direction, shape ``(d_model,)``.
        hook_name: full TransformerLens hook name, e.g. ``"blocks.14.hook_resid_post"``.
        layer: block index (parsed from ``hook_name`` when omitted).
        model_name: name of the model it was made on.
        method: ``"bipo"``, ``"caa"``, ``"actadd"``, ``"pca"``, ``"imported"`` ...
        config: the training or extraction config (JSON-serialisable).
        data_fingerprint: fingerprint of the training data (``workbench.data.formats.fingerprint``).
        metadata: anything else (behavior name, history summary ...).
        version: workbench version that made it.

    Example:
        >>> v = SteeringVector(torch.randn(576), "blocks.14.hook_resid_post", method="caa")
        >>> (2 * v).norm == 2 * v.norm
        True
    """

    vector: Float[Tensor, " d_model"]
    hook_name: str
    layer: int | None = None
    model_name: str | None = None
    method: str = "unknown"
    config: Mapping[str, Any] = field(default_factory=dict)
    data_fingerprint: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    version: str = __version__

    def __post_init__(self) -> None:
        if not isinstance(self.vector, torch.Tensor):
            raise TypeError(f"vector must be a torch.Tensor, got {type(self.vector).__name__}")
        if self.vector.ndim != 1 or self.vector.numel() == 0:
            raise ValueError(f"vector must have shape (d_model,), got {tuple(self.vector.shape)}")
        layer, _ = parse_hook_name(self.hook_name)
        if self.layer is None:
            object.__setattr__(self, "layer", layer)
        elif int(self.layer) != layer:
            raise ValueError(f"layer={self.layer} disagrees with hook_name {self.hook_name!r}")
        object.__setattr__(self, "vector", self.vector.detach())

    # ------------------------------------------------------------------ properties
    @property
    def d_model(self) -> int:
        return int(self.vector.shape[0])

    @property
    def hook_point(self) -> str:
        """The hook point without the block: ``"hook_resid_post"``."""
        return parse_hook_name(self.hook_name)[1]

    @property
    def norm(self) -> float:
        return float(self.vector.float().norm())

    # ------------------------------------------------------------------ transformations
    def replace(self, **changes: Any) -> SteeringVector:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def scaled(self, factor: float) -> SteeringVector:
        return self.replace(vector=self.vector * float(factor))

    def normalized(self, norm: float = 1.0) -> SteeringVector:
        """The same direction with the given L2 norm."""
        n = self.vector.float().norm()
        if n == 0:
            raise ValueError("cannot normalise a zero vector")
        return self.replace(vector=(self.vector.float() * (norm / n)).to(self.vector.dtype))

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> SteeringVector:
        return self.replace(vector=self.vector.to(device=device, dtype=dtype))

    def at(self, hook: str | int) -> SteeringVector:
        """The same vector moved to another hook: a full hook name, or a layer (same hook point)."""
        name = full_hook_name(hook, self.hook_point) if isinstance(hook, int) else full_hook_name(0, hook)
        return self.replace(hook_name=name, layer=None)

    def cosine(self, other: SteeringVector | Float[Tensor, " d_model"]) -> float:
        o = other.vector if isinstance(other, SteeringVector) else other
        return float(torch.nn.functional.cosine_similarity(self.vector.float(), o.float(), dim=0))

    def __mul__(self, factor: float) -> SteeringVector:
        return self.scaled(factor)

    __rmul__ = __mul__

    def __neg__(self) -> SteeringVector:
        return self.scaled(-1.0)

    def __add__(self, other: SteeringVector) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if other.hook_name != self.hook_name:
            raise ValueError(f"cannot add vectors at different hooks ({self.hook_name} vs {other.hook_name}); "
                             "apply them together with workbench.steer instead")
        if other.d_model != self.d_model:
            raise ValueError(f"cannot add vectors of d_model {self.d_model} and {other.d_model}")
        return self.replace(vector=self.vector + other.vector.to(self.vector), method="sum",
                            metadata={"terms": [self.describe(), other.describe()]})

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self + (-other)

    def describe(self) -> str:
        return f"{self.method}@{self.hook_name} (norm {self.norm:.3g}, model {self.model_name})"

    def __repr__(self) -> str:
        return (f"SteeringVector(method={self.method!r}, hook_name={self.hook_name!r}, d_model={self.d_model}, "
                f"norm={self.norm:.4g}, model_name={self.model_name!r})")

    # ------------------------------------------------------------------ model checks
    def check_compatible(self, model: Model, *, strict_model_name: bool = False) -> None:
        """Raise ``IncompatibleVectorError`` if the vector cannot be added to ``model``."""
        d_model = int(model.cfg.d_model)
        if self.d_model != d_model:
            raise IncompatibleVectorError(
                f"vector {self.describe()} has d_model {self.d_model} but model "
                f"{model.cfg.model_name!r} has d_model {d_model}")
        if self.hook_name not in model.hook_dict:
            valid = valid_hook_names(model)
            raise IncompatibleVectorError(
                f"hook {self.hook_name!r} does not exist in model {model.cfg.model_name!r} "
                f"({model.cfg.n_layers} layers); valid hooks: {valid[0]} ... {valid[-1]} "
                f"(points: {', '.join(BLOCK_HOOKS)})")
        if strict_model_name and self.model_name and self.model_name != model.cfg.model_name:
            raise IncompatibleVectorError(
                f"vector was made on {self.model_name!r}, not {model.cfg.model_name!r}")

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        """The metadata (everything but the tensor) as JSON values."""
        return {
            "format_version": FORMAT_VERSION,
            "hook_name": self.hook_name,
            "layer": self.layer,
            "d_model": self.d_model,
            "dtype": str(self.vector.dtype).removeprefix("torch."),
            "model_name": self.model_name,
            "method": self.method,
            "config": _json_safe(dict(self.config)),
            "data_fingerprint": self.data_fingerprint,
            "metadata": _json_safe(dict(self.metadata)),
            "version": self.version,
        }

    def save(self, directory: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
        """Write ``vector.safetensors`` and ``vector.json`` into ``directory`` (created), all or nothing.

        The JSON records the tensor file's SHA-256, so a directory whose two files do not belong
        together is detected on load. The files (and ``extra``'s) are committed by one directory rename
        under the directory's one-writer lock: a full disk or a kill leaves the old artifact or the whole
        new one, and a concurrent writer waits its turn (``workbench.core.artifacts.write_artifact``).

        Args:
            directory: the vector directory.
            extra: companion JSON files committed with the vector, ``{file name: JSON object}`` (a
                trained vector's ``{"history.json": result.to_dict()}``).

        Raises:
            ArtifactBusyError: another process kept the directory's lock (it is named) too long.
            OSError: a full disk or permission error, naming the path; the old files are untouched.
        """
        directory = Path(directory)
        if not torch.isfinite(self.vector.float()).all():
            raise ValueError(f"{directory}: refusing to save a vector holding NaN or infinite values")
        extra = dict(extra or {})
        for name in extra:
            if name in (VECTOR_FILE, META_FILE) or not name or name.startswith(".") or Path(name).name != name:
                raise ValueError(f"{directory}: cannot save a companion file named {name!r} (a plain file name "
                                 f"other than {VECTOR_FILE} and {META_FILE})")
        texts = {name: json_text(obj) for name, obj in extra.items()}  # refused (NaN ...) before any write
        data = safetensors_bytes({"vector": self.vector})
        meta = self.to_dict() | {"sha256": hashlib.sha256(data).hexdigest()}
        meta_text = json_text(meta)
        files = {VECTOR_FILE: lambda p: p.write_bytes(data)}
        files |= {name: (lambda p, text=text: p.write_text(text, encoding="utf-8")) for name, text in texts.items()}
        files[META_FILE] = lambda p: p.write_text(meta_text, encoding="utf-8")
        write_artifact(directory, files, legacy_names=(VECTOR_FILE, META_FILE))
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> SteeringVector:
        """Read a vector directory written by ``save``; every field is validated."""
        directory = Path(directory)
        if directory.is_file() and directory.name in (VECTOR_FILE, META_FILE):
            directory = directory.parent
        with artifact_read_lock(directory):  # no writer commits while the two files are read
            recover_artifact(directory, (VECTOR_FILE, META_FILE))
            return cls._load_unlocked(directory, device)

    @classmethod
    def _load_unlocked(cls, directory: Path, device: str | torch.device) -> SteeringVector:
        meta_path, tensor_path = directory / META_FILE, directory / VECTOR_FILE
        for p in (meta_path, tensor_path):
            if not p.is_file():
                raise VectorFileError(f"{p}: missing (a vector directory holds {VECTOR_FILE} and {META_FILE})")
        if meta_path.stat().st_size > _MAX_META_BYTES:
            raise VectorFileError(f"{meta_path}: {meta_path.stat().st_size} bytes, too large for vector metadata")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise VectorFileError(f"{meta_path}: not valid JSON ({exc})") from exc
        _check_meta(meta, meta_path)
        header = read_safetensors_header(tensor_path, VectorFileError, dtypes=_FLOAT_DTYPES)
        if set(header) != {"vector"}:
            raise VectorFileError(f"{tensor_path}: expected one tensor named 'vector', found {sorted(header)}")
        if header["vector"]["shape"] != [meta["d_model"]]:
            raise VectorFileError(f"{tensor_path}: shape {tuple(header['vector']['shape'])} does not match "
                                  f"d_model {meta['d_model']} in {meta_path}")
        raw = tensor_path.read_bytes()  # its size is checked: the header's shape and d_model bound it
        if "sha256" in meta and hashlib.sha256(raw).hexdigest() != meta["sha256"]:
            raise VectorFileError(f"{tensor_path}: checksum does not match {meta_path} (corrupt or mixed files)")
        try:
            vec = load_safetensors(raw)["vector"]
        except Exception as exc:
            raise VectorFileError(f"{tensor_path}: not a readable safetensors file ({exc})") from exc
        if not torch.isfinite(vec.float()).all():
            raise VectorFileError(f"{tensor_path}: vector holds NaN or infinite values")
        try:
            return cls(vector=vec.to(device), hook_name=meta["hook_name"], layer=meta.get("layer"),
                       model_name=meta.get("model_name"), method=meta["method"],
                       config=meta.get("config") or {}, data_fingerprint=meta.get("data_fingerprint"),
                       metadata=meta.get("metadata") or {}, version=meta.get("version", "unknown"))
        except ValueError as exc:
            raise VectorFileError(f"{meta_path}: {exc}") from exc


def _check_meta(meta: Any, path: Path) -> None:
    """Refuse a ``vector.json`` whose fields are unknown, missing, of the wrong JSON type or out of range."""
    if not isinstance(meta, dict):
        raise VectorFileError(f"{path}: expected a JSON object")
    unknown = sorted(set(meta) - set(_META_FIELDS))
    if unknown:
        raise VectorFileError(f"{path}: unknown field(s) {unknown}; a vector.json holds {', '.join(_META_FIELDS)}")
    for key in _REQUIRED_META:
        if key not in meta:
            raise VectorFileError(f"{path}: missing field {key!r}")
    for key, value in meta.items():
        types = _META_FIELDS[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join("null" if t is type(None) else {int: "an integer", str: "a string",
                                                                 dict: "an object"}[t] for t in types)
            raise VectorFileError(f"{path}: field {key!r} is {json.dumps(value)[:40]}; expected {names}")
    if meta["d_model"] < 1 or (meta.get("layer") is not None and meta["layer"] < 0):
        raise VectorFileError(f"{path}: field {'d_model' if meta['d_model'] < 1 else 'layer'} is out of range")
    if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise VectorFileError(f"{path}: format_version {meta['format_version']} is newer than "
                              f"this workbench reads ({FORMAT_VERSION})")
    method = meta["method"]
    if not method or ".." in method or any(c in method for c in "/\\\0\n\r"):
        raise VectorFileError(f"{path}: field 'method' is {method!r}; a method name holds no path separators")
    try:
        parse_hook_name(meta["hook_name"])
    except ValueError as exc:
        raise VectorFileError(f"{path}: field 'hook_name': {exc}") from None


def load_vector(directory: str | Path, model: Model | None = None, device: str | torch.device = "cpu") -> SteeringVector:
    """Load a vector directory; with ``model`` also check that it fits (d_model and hook name)."""
    vec = SteeringVector.load(directory, device=device)
    if model is not None:
        vec.check_compatible(model)
    return vec

