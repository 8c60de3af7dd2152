"""Training steering vectors: the preference trainer and its objectives (BiPO, RePS), and the
mean-difference baselines (CAA, ActAdd, PCA)."""

from workbench.train.baselines import (actadd, caa, difference_coherence, layer_coherence, mean_difference_vectors,
                                      pair_coherence, pca)
from workbench.train.bipo import BIPO, BiPOConfig, train_bipo
from workbench.train.reps import REPS, RePSConfig, train_reps
from workbench.train.trainer import (BiPOResult, Objective, TrainConfig, TrainResult, checkpoint_vectors,
                                     relayout_plan, train_preference_vector)

__all__ = ["BIPO", "BiPOConfig", "BiPOResult", "Objective", "REPS", "RePSConfig", "TrainConfig", "TrainResult",
           "actadd", "caa", "checkpoint_vectors", "difference_coherence", "layer_coherence", "mean_difference_vectors", "pair_coherence",
           "pca", "relayout_plan", "train_bipo", "train_preference_vector", "train_reps"]
