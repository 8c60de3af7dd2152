"""Vector interchange: official BiPO ``.pt`` vectors and plain tensors in, llama.cpp control vectors out.

Steering vectors travel between codebases as bare tensors. This module turns them into
``SteeringVector`` objects and back, without ever unpickling an arbitrary object:

* **Official BiPO vectors** (Cao et al. 2024, arXiv 2406.00045; github.com/CaoYuanpu/BiPO): ``torch.save``
  files named like ``vec_ep20_layer15.pt`` holding one ``(d_model,)`` fp32 tensor that the official
  ``BlockWrapper`` adds to the output of decoder layer ``L`` - in TransformerLens terms
  ``blocks.{L}.hook_resid_post``. The layer is read from the file name unless given.
* **Plain tensors**: ``.pt``/``.pth`` (``torch.load(..., weights_only=True)`` only: a plain tensor or a
  dict of tensors, anything else is refused), ``.npy``/``.npz`` (``allow_pickle=False``) and
  ``.safetensors``, at a hook you name.
* **GGUF control vectors**, the format of llama.cpp's ``--control-vector`` and of repeng's
  ``ControlVector.export_gguf``/``import_gguf``: a GGUF with architecture ``controlvector``, KV
  ``controlvector.model_hint`` (string) and ``controlvector.layer_count`` (uint32), and one float32
  tensor ``direction.{N}`` of shape ``(d_model,)`` per layer.

Layer numbering (read from the sources, llama.cpp ``common/common.cpp`` ``common_control_vector_load_one``
and ``src/llama-adapter.cpp`` ``llama_adapter_cvec``; repeng ``control.py``/``extract.py``):
llama.cpp's loader stores ``direction.N`` at offset ``(N - 1) * n_embd`` of its buffer, and
``llama_adapter_cvec::apply`` fills the tensor for graph layer ``il`` from offset ``(il - 1) * n_embd``;
the two ``- 1`` cancel, so ``direction.N`` is added in graph layer ``il = N`` (0-based, like
TransformerLens' blocks) right after the block's FFN residual add (``build_cvec(cur, il)`` before
``l_out``), i.e. to the *output* of block N. repeng agrees: ``direction.{k}`` is added to the output of
``model.layers[k]``. Hence::

    blocks.{L}.hook_resid_post   <->   direction.{L}        (L >= 1)

There is no slot for block 0's output (llama.cpp never allocates ``tensors[0]``, and a file holding
``direction.0`` is rejected as a whole), and no slot for the embeddings. ``blocks.{L}.hook_resid_pre``
is the same point as ``blocks.{L-1}.hook_resid_post`` and is exported as ``direction.{L-1}``; other hook
points (attention/MLP outputs, ``resid_mid``) cannot be expressed and are refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from workbench.core.backend import Model
from workbench.core.io import atomic_write as _atomic
from workbench.core.io import read_safetensors_header
from workbench.core.vector import META_FILE, VECTOR_FILE, SteeringVector, full_hook_name, parse_hook_name

logger = logging.getLogger(__name__)

GGUF_ARCH = "controlvector"
GGUF_MODEL_HINT = f"{GGUF_ARCH}.model_hint"
GGUF_LAYER_COUNT = f"{GGUF_ARCH}.layer_count"
#: Extra KV (ignored by llama.cpp and repeng) holding each vector's workbench metadata as JSON.
GGUF_WORKBENCH_KEY = "workbench.vectors"
TENSOR_SUFFIXES = (".pt", ".pth", ".bin", ".npy", ".npz", ".safetensors")
_DIRECTION_RE = re.compile(r"^direction\.(\d+)$")
_LAYER_RE = re.compile(r"layer[_-]?(\d+)", re.IGNORECASE)
_EPOCH_RE = re.compile(r"(?:^|_)ep(?:och)?[_-]?(\d+)", re.IGNORECASE)


class InterchangeError(ValueError):
    """A foreign vector file cannot be read, or a vector cannot be written in a foreign format."""


# --------------------------------------------------------------------------- layer mapping
def gguf_layer(name: str) -> int:
    """The llama.cpp ``direction.{N}`` index for a workbench hook name (see the module docstring).

    ``blocks.L.hook_resid_post`` -> ``L``; ``blocks.L.hook_resid_pre`` -> ``L - 1``.

    Raises:
        InterchangeError: the hook point has no llama.cpp control-vector slot.
    """
    layer, point = parse_hook_name(name)
    if point == "hook_resid_pre":
        layer -= 1
    elif point != "hook_resid_post":
        raise InterchangeError(
            f"{name}: llama.cpp control vectors are added to block outputs (hook_resid_post) only; "
            f"{point} cannot be exported to GGUF")
    if layer < 1:
        raise InterchangeError(
            f"{name}: llama.cpp has no control-vector slot for "
            f"{'the embeddings' if layer < 0 else 'the output of block 0'} (direction.0 is rejected by its "
            "loader); export a vector at blocks.1.hook_resid_post or later")
    return layer


def hook_for_gguf_layer(index: int) -> str:
    """The workbench hook name for llama.cpp ``direction.{index}``: ``blocks.{index}.hook_resid_post``."""
    return full_hook_name(int(index), "resid_post")


# --------------------------------------------------------------------------- safe tensor reading
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pick(entries: Mapping[str, Any], key: str | None, path: Path) -> Any:
    """One entry of a dict-like file: ``key`` if given, else the only entry."""
    if key is not None:
        if key not in entries:
            raise InterchangeError(f"{path}: no key {key!r}; keys: {sorted(map(str, entries))}")
        return entries[key]
    bad = sorted(str(k) for k, v in entries.items() if not isinstance(v, (Tensor, np.ndarray)))
    if bad:
        raise InterchangeError(f"{path}: expected a tensor or a dict of tensors, but entries {bad} are not "
                               "tensors; pass key= to select one tensor")
    if len(entries) != 1:
        raise InterchangeError(f"{path}: holds {len(entries)} tensors {sorted(map(str, entries))}; "
                               "pass key= to choose one")
    return next(iter(entries.values()))


def _load_torch(path: Path) -> Any:
    """``torch.load`` restricted to tensors and containers: a pickled object is refused, never built."""
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol before refusing the file
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if type(exc).__name__ == "UnpicklingError":  # the weights-only unpickler stopped
            glob = re.search(r"GLOBAL ([\w.]+)", str(exc))
            detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
            why = (f"it references {glob.group(1)}" if glob else
                   detail.group(1).strip() if detail else "not a plain tensor pickle")
            raise InterchangeError(
                f"{path}: refused: torch.load(weights_only=True) rejected it ({why}). workbench never "
                "unpickles arbitrary objects; save a plain tensor (or a dict of tensors), or convert it to "
                ".safetensors / .npy") from None
        # zip, struct or runtime errors from a file that is not a torch file at all
        raise InterchangeError(f"{path}: not a readable torch tensor file ({type(exc).__name__}: {exc})") from None


def read_tensor(path: str | Path, key: str | None = None) -> Tensor:
    """Read one 1-D floating-point tensor from a foreign file, safely.

    ``.pt``/``.pth``/``.bin``: ``torch.load(weights_only=True)``; a plain tensor, or a dict of tensors
    (one: taken; several: ``key`` chooses). ``.npy``: ``np.load(allow_pickle=False)``; ``.npz`` and
    ``.safetensors``: as dicts.

    Raises:
        InterchangeError: unreadable file, pickled objects, object arrays, several tensors without
            ``key``, a non-1-D or non-floating tensor, NaN/inf values. The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth", ".bin"):
        obj = _load_torch(path)
        if isinstance(obj, Mapping):
            obj = _pick(obj, key, path)
        elif key is not None:
            raise InterchangeError(f"{path}: holds a single {type(obj).__name__}, not a dict; drop key={key!r}")
    elif suffix in (".npy", ".npz"):
        try:
            obj = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise InterchangeError(f"{path}: refused: {exc} (object arrays need pickle, which workbench "
                                   "never uses; save a numeric array)") from None
        except Exception as exc:
            raise InterchangeError(f"{path}: not a readable numpy file ({type(exc).__name__}: {exc})") from None
        if isinstance(obj, np.lib.npyio.NpzFile):
            with obj:
                try:
                    entries = {k: obj[k] for k in obj.files}
                except ValueError as exc:
                    raise InterchangeError(f"{path}: refused: {exc}") from None
            obj = _pick(entries, key, path)
    elif suffix == ".safetensors":
        read_safetensors_header(path, InterchangeError)  # sizes checked before anything is read
        try:
            obj = _pick(load_file(str(path)), key, path)
        except InterchangeError:
            raise
        except Exception as exc:
            raise InterchangeError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    else:
        raise InterchangeError(f"{path}: unknown tensor file type {suffix!r}; expected one of "
                               f"{', '.join(TENSOR_SUFFIXES)}")
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise InterchangeError(f"{path}: refused: object array")
        obj = torch.from_numpy(np.array(obj))
    if not isinstance(obj, Tensor):
        raise InterchangeError(f"{path}: expected a tensor, found {type(obj).__name__}")
    tensor = obj.detach().clone().cpu()
    if tensor.ndim != 1 or tensor.numel() == 0:
        raise InterchangeError(f"{path}: expected a 1-D (d_model,) vector, found shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise InterchangeError(f"{path}: expected a floating-point vector, found dtype {tensor.dtype}")
    if not torch.isfinite(tensor.float()).all():
        raise InterchangeError(f"{path}: the vector holds NaN or infinite values")
    return tensor


def _check_d_model(vec: SteeringVector, path: Path, d_model: int | None, model: Model | None) -> None:
    if d_model is not None and vec.d_model != int(d_model):
        raise InterchangeError(f"{path}: vector has d_model {vec.d_model}, expected {d_model}")
    if model is not None:
        try:
            vec.check_compatible(model)
        except ValueError as exc:
            raise InterchangeError(f"{path}: {exc}") from None


# --------------------------------------------------------------------------- tensor import
def import_vector(path: str | Path, hook: str = "resid_post", *, layer: int | None = None,
                  model_name: str | None = None, d_model: int | None = None, model: Model | None = None,
                  key: str | None = None) -> SteeringVector:
    """Import a plain tensor file as a ``SteeringVector(method="imported")``.

    Args:
        path: ``.pt``/``.pth``/``.bin``, ``.npy``/``.npz`` or ``.safetensors`` file (see ``read_tensor``).
        hook: a full hook name (``"blocks.14.hook_resid_post"``) or a hook point (``"resid_post"``,
            the default, where BiPO and CAA add their vectors) combined with ``layer``.
        layer: block index; when omitted with a bare hook point it is read from the file name
            (``..._layer15...``).
        model_name: recorded on the vector (``model.cfg.model_name`` when ``model`` is given).
        d_model, model: when given, the vector is checked against them.
        key: which tensor of a dict-like file.

    Returns:
        The vector; ``metadata`` records the source file, its SHA-256 and format.
    """
    path = Path(path)
    tensor = read_tensor(path, key)
    if hook.startswith("blocks."):
        name = hook
        if layer is not None and parse_hook_name(name)[0] != int(layer):
            raise InterchangeError(f"{path}: layer={layer} disagrees with hook {hook!r}")
    else:
        from_name = _LAYER_RE.search(path.stem)
        if layer is None and from_name is None:
            raise InterchangeError(f"{path}: give the layer (layer=): the file name has no "
                                   "'layer<N>' in it")
        if layer is not None and from_name is not None and int(from_name.group(1)) != int(layer):
            logger.warning("%s: using layer %d given explicitly, not %s from the file name",
                           path, layer, from_name.group(1))
        name = full_hook_name(int(layer) if layer is not None else int(from_name.group(1)), hook)
    if model is not None and model_name is None:
        model_name = model.cfg.model_name
    meta = {"source_file": str(path.resolve()), "source_sha256": _sha256(path),
            "source_format": path.suffix.lower().lstrip(".")}
    if key is not None:
        meta["source_key"] = key
    vec = SteeringVector(tensor, name, model_name=model_name, method="imported", metadata=meta)
    _check_d_model(vec, path, d_model, model)
    return vec


def import_bipo_vector(path: str | Path, model_name: str | None = None, layer: int | None = None, *,
                       d_model: int | None = None, model: Model | None = None) -> SteeringVector:
    """Import a vector written by the official BiPO code (``vec_ep{E}_layer{L}.pt``).

    The official ``BlockWrapper`` adds the vector to the output of decoder layer ``L``, so it lands at
    ``blocks.{L}.hook_resid_post``; ``L`` comes from the file name unless ``layer`` is given. The
    epoch in the name is kept in ``config``.

    Example:
        >>> v = import_bipo_vector("vec_ep20_layer15.pt", model_name="meta-llama/Llama-2-7b-chat-hf")
        >>> v.hook_name
        'blocks.15.hook_resid_post'
    """
    path = Path(path)
    vec = import_vector(path, "resid_post", layer=layer, model_name=model_name, d_model=d_model, model=model)
    epoch = _EPOCH_RE.search(path.stem)
    config = {"source": "official BiPO code (github.com/CaoYuanpu/BiPO)"}
    if epoch:
        config["epoch"] = int(epoch.group(1))
    return vec.replace(config=config, metadata={**vec.metadata, "source_format": "bipo-pt"})


# --------------------------------------------------------------------------- GGUF control vectors
def export_gguf(vectors: SteeringVector | Sequence[SteeringVector], path: str | Path,
                model_hint: str | None = None) -> Path:
    """Write vectors as one llama.cpp / repeng control-vector GGUF file, atomically.

    Each vector becomes the float32 tensor ``direction.{gguf_layer(v.hook_name)}``; use it with
    ``llama-cli -m model.gguf --control-vector file.gguf`` (or ``--control-vector-scaled file.gguf 4``
    for multiplier 4), or ``repeng.ControlVector.import_gguf``.

    Args:
        vectors: one vector or several at different layers (same d_model), e.g. a per-layer stack.
        path: destination ``.gguf`` file.
        model_hint: ``controlvector.model_hint`` (default: the vectors' ``model_name``).

    Raises:
        InterchangeError: a hook point llama.cpp cannot apply, two vectors for one layer, mixed d_model.
    """
    path = Path(path)
    vectors = [vectors] if isinstance(vectors, SteeringVector) else list(vectors)
    if not vectors:
        raise InterchangeError(f"{path}: nothing to export")
    by_layer: dict[int, SteeringVector] = {}
    for v in vectors:
        n = gguf_layer(v.hook_name)
        if n in by_layer:
            raise InterchangeError(f"{path}: {by_layer[n].hook_name} and {v.hook_name} both map to direction.{n}; "
                                   "add them into one vector first")
        if v.d_model != vectors[0].d_model:
            raise InterchangeError(f"{path}: vectors have different d_model ({vectors[0].d_model} and {v.d_model})")
        if v.hook_point != "hook_resid_post":
            logger.info("%s is exported as direction.%d (= blocks.%d.hook_resid_post, the same point)",
                        v.hook_name, n, n)
        by_layer[n] = v
    hints = {v.model_name for v in vectors if v.model_name}
    hint = model_hint or (hints.pop() if len(hints) == 1 else "unknown")
    info = {f"direction.{n}": v.to_dict() for n, v in sorted(by_layer.items())}

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), GGUF_ARCH)
        writer.add_string(GGUF_MODEL_HINT, hint)
        writer.add_uint32(GGUF_LAYER_COUNT, len(by_layer))
        writer.add_string(GGUF_WORKBENCH_KEY, json.dumps(info))
        for n, v in sorted(by_layer.items()):
            writer.add_tensor(f"direction.{n}", v.vector.detach().float().cpu().numpy())  # (d_model,) f32
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return _atomic(path, write)


def _string_field(reader: Any, key: str) -> str | None:
    field = reader.get_field(key)
    if field is None or not len(field.parts):
        return None
    return bytes(field.parts[-1]).decode("utf-8", errors="replace")


def import_gguf(path: str | Path, *, model_name: str | None = None, d_model: int | None = None,
                model: Model | None = None) -> list[SteeringVector]:
    """Read a llama.cpp / repeng control-vector GGUF: one vector per ``direction.{N}`` tensor.

    ``direction.N`` becomes ``blocks.N.hook_resid_post`` (see the module docstring), sorted by layer.
    Files written by ``export_gguf`` give back their method, config and metadata; others come in as
    ``method="imported"``. ``model_name`` defaults to ``controlvector.model_hint``.

    Raises:
        InterchangeError: not a GGUF file, no ``direction.*`` tensors, a tensor that is not a 1-D
            float vector, tensors of different lengths, or a d_model mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:
        raise InterchangeError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None
    arch = _string_field(reader, "general.architecture")
    if arch != GGUF_ARCH:
        logger.warning("%s: GGUF architecture is %r, not %r", path, arch, GGUF_ARCH)
    hint = _string_field(reader, GGUF_MODEL_HINT)
    try:
        info = json.loads(_string_field(reader, GGUF_WORKBENCH_KEY) or "{}")
    except json.JSONDecodeError:
        logger.warning("%s: ignoring unreadable %s metadata", path, GGUF_WORKBENCH_KEY)
        info = {}
    if model is not None and model_name is None:
        model_name = model.cfg.model_name
    sha, found, others = _sha256(path), [], []
    for t in reader.tensors:
        m = _DIRECTION_RE.match(t.name)
        if not m:
            others.append(t.name)
            continue
        if t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            raise InterchangeError(f"{path}: tensor {t.name} has type {t.tensor_type.name}; control vectors are F32")
        if len(t.shape) != 1:
            raise InterchangeError(f"{path}: tensor {t.name} has shape {tuple(int(s) for s in t.shape)}; "
                                   "control vectors are 1-D (d_model,)")
        data = torch.from_numpy(np.array(t.data, dtype=np.float32))  # copy out of the memory map
        if not torch.isfinite(data).all():
            raise InterchangeError(f"{path}: tensor {t.name} holds NaN or infinite values")
        found.append((int(m.group(1)), t.name, data))
    if others:
        logger.warning("%s: ignoring tensors that are not control-vector directions: %s (llama.cpp would "
                       "reject this file)", path, others[:5])
    if not found:
        raise InterchangeError(f"{path}: no control-vector tensors (named direction.<layer>) in this GGUF "
                               f"(architecture {arch!r}, tensors {others[:5]})")
    if len({d.numel() for _, _, d in found}) > 1:
        raise InterchangeError(f"{path}: direction tensors have different lengths "
                               f"{sorted({d.numel() for _, _, d in found})}")
    vectors = []
    for n, name, data in sorted(found):
        if n == 0:
            logger.warning("%s: direction.0 (output of block 0) is imported, but llama.cpp rejects files holding it",
                           path)
        saved = info.get(name) if isinstance(info, dict) else None
        saved = saved if isinstance(saved, dict) and saved.get("d_model") == data.numel() else {}
        meta = {**(saved.get("metadata") or {}), "source_file": str(path.resolve()), "source_sha256": sha,
                "source_format": "gguf", "gguf_tensor": name}
        vec = SteeringVector(data, hook_for_gguf_layer(n), model_name=model_name or saved.get("model_name") or hint,
                             method=saved.get("method", "imported"), config=saved.get("config") or {},
                             data_fingerprint=saved.get("data_fingerprint"), metadata=meta)
        _check_d_model(vec, path, d_model, model)
        vectors.append(vec)
    return vectors


# --------------------------------------------------------------------------- one entry point for the CLI
def read_any(path: str | Path, *, layer: int | None = None, hook: str = "resid_post",
             model_name: str | None = None, d_model: int | None = None, model: Model | None = None,
             key: str | None = None) -> list[SteeringVector]:
    """Vectors from a vector directory, a ``.gguf`` file or a tensor file, chosen by what ``path`` is.

    For a GGUF, ``layer`` selects one of its layers; for a tensor file it places the vector.
    """
    path = Path(path)
    if path.is_dir() or (path.name in (VECTOR_FILE, META_FILE) and (path.parent / META_FILE).is_file()):
        vec = SteeringVector.load(path)
        _check_d_model(vec, path, d_model, model)
        return [vec]
    suffix = path.suffix.lower()
    if suffix == ".gguf":
        vectors = import_gguf(path, model_name=model_name, d_model=d_model, model=model)
        if layer is not None:
            vectors = [v for v in vectors if v.layer == int(layer)]
            if not vectors:
                raise InterchangeError(f"{path}: no direction.{layer} in this file")
        return vectors
    if suffix in TENSOR_SUFFIXES:
        if re.match(r"^vec_ep\d+_layer\d+$", path.stem) and suffix == ".pt" and hook == "resid_post":
            return [import_bipo_vector(path, model_name, layer, d_model=d_model, model=model)]
        return [import_vector(path, hook, layer=layer, model_name=model_name, d_model=d_model, model=model,
                              key=key)]
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    raise InterchangeError(f"{path}: unknown input type; expected a vector directory, .gguf or one of "
                           f"{', '.join(TENSOR_SUFFIXES)}")


def write_any(vectors: Sequence[SteeringVector], path: str | Path, model_hint: str | None = None) -> list[Path]:
    """Write vectors to a ``.gguf`` file (all in one) or a vector directory (one, or one subdirectory
    ``layer{L:02d}`` per vector when there are several). Returns the paths written."""
    path = Path(path)
    if path.suffix.lower() == ".gguf":
        return [export_gguf(vectors, path, model_hint=model_hint)]
    if path.suffix.lower() in TENSOR_SUFFIXES:
        raise InterchangeError(f"{path}: workbench writes vector directories (safetensors + JSON) and .gguf "
                               "control vectors, not bare tensor files")
    if len(vectors) == 1:
        return [vectors[0].save(path)]
    layers = [v.layer for v in vectors]
    if len(set(layers)) != len(layers):
        raise InterchangeError(f"{path}: several vectors at the same layer; write them one by one")
    return [v.save(path / f"layer{v.layer:02d}") for v in vectors]
