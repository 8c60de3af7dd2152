"""Studies built from the layers below: the reproduction workflow, refusal, truthfulness, LoRA transfer, cells,
and the runs behind the command line (``Run`` configs and ``*_run`` functions)."""

from workbench.studies.config import (ExecutionConfig, LoRAFinetuneConfig, LoRATransferConfig, RefusalConfig, StudyConfig,
                                      TruthfulnessConfig)
from workbench.studies.lora import lora_finetunes, lora_transfer
from workbench.studies.refusal import refusal_study
from workbench.studies.reproduce import demo
from workbench.studies.run_evaluate import (CompareRun, EvalRun, RefusalRun, compare_run, evaluate_run, format_compare,
                                            format_refusal, refusal_run)
from workbench.studies.run_files import ConvertRun, convert_run, figures_run, info_run, report_run
from workbench.studies.run_studies import DemoRun, ReproduceRun, SweepRun, demo_run, reproduce_run, sweep_run
from workbench.studies.run_train import TrainRun, train_run
from workbench.studies.runs import DataOptions, ModelOptions, RunError
from workbench.studies.stages import study_sweeps
from workbench.studies.truthfulness import truthfulness_study
from workbench.studies.vectors import study_extra_vectors, study_pairs, study_vectors

__all__ = ["CompareRun", "ConvertRun", "DataOptions", "DemoRun", "EvalRun", "ExecutionConfig", "LoRAFinetuneConfig",
           "LoRATransferConfig", "ModelOptions", "RefusalConfig", "RefusalRun", "ReproduceRun", "RunError",
           "StudyConfig", "SweepRun", "TrainRun", "TruthfulnessConfig", "compare_run", "convert_run", "demo",
           "demo_run", "evaluate_run", "figures_run", "format_compare", "format_refusal", "info_run", "lora_finetunes",
           "lora_transfer", "refusal_run", "refusal_study", "report_run", "reproduce_run", "study_extra_vectors",
           "study_pairs", "study_sweeps", "study_vectors", "sweep_run", "train_run", "truthfulness_study"]
