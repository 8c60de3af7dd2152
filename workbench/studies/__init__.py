"""Studies built from the layers below: the reproduction workflow, refusal, truthfulness, LoRA transfer, cells,
and the runs behind the command line (``Run`` configs and ``*_run`` functions)."""

from workbench.studies.config import (ExecutionConfig, LoRAFinetuneConfig, LoRATransferConfig, RefusalConfig, StudyConfig,
                                      TruthfulnessConfig)
from workbench.studies.lora import lora_finetunes, lora_transfer
from workbench.studies.refusal import refusal_study
from workbench.studies.reproduce import demo
from workbench.studies.run_evaluate import (CompareRun, EvalRun, RefusalRun, compare_run, evaluate_run, format_compare,
                                            format_refusal, refusal_run)
from workbench.studies.run_conditional import ConditionalRun, conditional_run, format_conditional
from workbench.studies.run_entanglement import EntanglementRun, entanglement_run, format_entanglement
from workbench.studies.run_mechanism import MechanismRun, format_mechanism, mechanism_run
from workbench.studies.run_prompting import PromptingRun, format_prompting, prompting_run
from workbench.studies.run_files import ConvertRun, convert_run, figures_run, info_run, report_run
from workbench.studies.run_studies import DemoRun, ReproduceRun, SweepRun, demo_run, reproduce_run, sweep_run
from workbench.studies.run_train import TrainRun, train_run
from workbench.studies.runs import DataOptions, ModelOptions, RunError
from workbench.studies.stages import study_sweeps
from workbench.studies.truthfulness import truthfulness_study
from workbench.studies.vectors import study_extra_vectors, study_pairs, study_vectors

__all__ = ["CompareRun", "ConditionalRun", "ConvertRun", "DataOptions", "DemoRun", "EntanglementRun", "EvalRun",
           "ExecutionConfig", "LoRAFinetuneConfig", "LoRATransferConfig", "MechanismRun", "ModelOptions",
           "PromptingRun", "RefusalConfig", "RefusalRun", "ReproduceRun", "RunError", "StudyConfig", "SweepRun",
           "TrainRun", "TruthfulnessConfig", "compare_run", "conditional_run", "convert_run", "demo", "demo_run",
           "entanglement_run", "evaluate_run", "figures_run", "format_compare", "format_conditional",
           "format_entanglement", "format_mechanism", "format_prompting", "format_refusal", "info_run",
           "lora_finetunes", "lora_transfer", "mechanism_run", "prompting_run", "refusal_run", "refusal_study",
           "report_run", "reproduce_run", "study_extra_vectors", "study_pairs", "study_sweeps", "study_vectors",
           "sweep_run", "train_run", "truthfulness_study"]
