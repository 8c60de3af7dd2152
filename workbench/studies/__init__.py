"""Studies built from the layers below: the reproduction workflow, refusal, truthfulness, LoRA transfer, cells."""

from workbench.studies.config import (ExecutionConfig, LoRAFinetuneConfig, LoRATransferConfig, RefusalConfig, StudyConfig,
                                      TruthfulnessConfig)
from workbench.studies.lora import lora_finetunes, lora_transfer
from workbench.studies.refusal import refusal_study
from workbench.studies.reproduce import demo
from workbench.studies.stages import study_sweeps
from workbench.studies.truthfulness import truthfulness_study
from workbench.studies.vectors import study_extra_vectors, study_pairs, study_vectors

__all__ = ["ExecutionConfig", "LoRAFinetuneConfig", "LoRATransferConfig", "RefusalConfig", "StudyConfig",
           "TruthfulnessConfig", "demo", "lora_finetunes", "lora_transfer", "refusal_study", "study_extra_vectors",
           "study_pairs", "study_sweeps", "study_vectors", "truthfulness_study"]
