"""The bottom layer: the TransformerLens backend, devices, model loading (the embedded model, local
Llama directories, hub names), prompts, the SteeringVector, atomic file writes, the result schema and
vector interchange."""

from workbench.core.backend import LINE, Model, remaining_hooks
from workbench.core.devices import ModelLoadError, resolve_device, resolve_dtype
from workbench.core.embedded import EMBEDDED_MODEL_NAME, EMBEDDED_N_LAYERS, load_embedded_model
from workbench.core.interchange import import_vector
from workbench.core.loading import load_model
from workbench.core.options import with_options
from workbench.core.prompts import format_chat
from workbench.core.results import ResultFormatError, load_result, result_table
from workbench.core.vector import SteeringVector, load_vector

__all__ = ["EMBEDDED_MODEL_NAME", "EMBEDDED_N_LAYERS", "LINE", "Model", "ModelLoadError", "ResultFormatError",
           "SteeringVector", "format_chat", "import_vector", "load_embedded_model", "load_model", "load_result",
           "load_vector", "remaining_hooks", "resolve_device", "resolve_dtype", "result_table", "with_options"]
