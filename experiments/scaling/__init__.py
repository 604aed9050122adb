"""Chinchilla-style compute-optimal scaling analysis: laws, the three fitting approaches, plots,
and a markdown report. Pure numpy/scipy/matplotlib; no training code."""

from experiments.scaling.approaches import (InsufficientDataError, RunTable, analyze, approach1,
                                            approach2, approach3, normalize_runs)
from experiments.scaling.laws import (CHINCHILLA, CHINCHILLA_TABLE2, EPOCH_AI, compute_optimal,
                                      loss)
from experiments.scaling.parametric import fit_parametric

__all__ = [
    "InsufficientDataError", "RunTable", "analyze", "approach1", "approach2", "approach3",
    "fit_parametric", "normalize_runs", "CHINCHILLA", "CHINCHILLA_TABLE2", "EPOCH_AI",
    "compute_optimal", "loss",
]
