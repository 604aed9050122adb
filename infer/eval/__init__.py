"""Evaluation with fixed weights: metrics, bootstrap, eval sets, runner, judge, agreement."""
