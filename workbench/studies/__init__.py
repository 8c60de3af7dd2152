"""Studies built from the layers below: the reproduction workflow, refusal, truthfulness, LoRA transfer, cells."""

from workbench.studies.lora import lora_finetunes, lora_transfer
from workbench.studies.refusal import refusal_study
from workbench.studies.reproduce import StudyConfig, demo, study_extra_vectors, study_pairs, study_sweeps, study_vectors
from workbench.studies.truthfulness import truthfulness_study

__all__ = ["StudyConfig", "demo", "lora_finetunes", "lora_transfer", "refusal_study", "study_extra_vectors", "study_pairs", "study_sweeps", "study_vectors", "truthfulness_study"]
