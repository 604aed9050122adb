"""Chinchilla-style compute-optimal scaling analysis: laws, the three fitting approaches, plots,
and a markdown report (`experiments.scaling.report.write_report`, imported separately so that
the analysis does not pull in matplotlib). Pure numpy/scipy; no training code."""

from experiments.scaling.approaches import (analyze, approach1, approach2, approach3,
                                            unmet_requirements)
from experiments.scaling.laws import (CHINCHILLA, CHINCHILLA_TABLE2, EPOCH_AI, compute_optimal,
                                      loss)
from experiments.scaling.parametric import fit_parametric
from experiments.scaling.runs import InsufficientDataError, RunTable, normalize_runs

__all__ = [
    "InsufficientDataError", "RunTable", "analyze", "approach1", "approach2", "approach3",
    "fit_parametric", "normalize_runs", "CHINCHILLA", "CHINCHILLA_TABLE2", "EPOCH_AI",
    "compute_optimal", "loss", "unmet_requirements",
]
