"""The bottom layer: the TransformerLens backend, model loading, prompts, the SteeringVector, atomic
file writes, the result schema and vector interchange."""

from workbench.core.backend import remaining_hooks
from workbench.core.interchange import import_vector
from workbench.core.loading import load_model
from workbench.core.prompts import format_chat
from workbench.core.results import ResultFormatError, load_result, result_table
from workbench.core.vector import SteeringVector, load_vector

__all__ = ["ResultFormatError", "SteeringVector", "format_chat", "import_vector", "load_model", "load_result", "load_vector", "remaining_hooks", "result_table"]
