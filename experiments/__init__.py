"""Experiment files: configs, sweeps, benchmarks and analyses, runnable with absl flags."""
