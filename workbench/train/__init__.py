"""Training steering vectors: the preference trainer (BiPO, RePS) and the mean-difference baselines."""

from workbench.train.baselines import actadd, caa, pca
from workbench.train.bipo import BiPOConfig, BiPOResult, train_bipo
from workbench.train.reps import RePSConfig, train_reps

__all__ = ["BiPOConfig", "BiPOResult", "RePSConfig", "actadd", "caa", "pca", "train_bipo", "train_reps"]
