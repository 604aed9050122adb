"""Installable package for the JAX/Flax language-model research code base."""

from setuptools import find_packages, setup

setup(
    name="jaxlm",
    version="0.1.0",
    description="Decoder-only transformers (dense and Mixture-of-Experts) in JAX/Flax: "
                "training, decoding, scaling-law experiments.",
    python_requires=">=3.10",
    packages=find_packages(include=["model", "model.*", "train", "train.*", "infer", "infer.*",
                                    "experiments", "experiments.*"]),
    install_requires=[
        "jax>=0.7",
        "flax>=0.10.6",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "sentencepiece>=0.2",
        "absl-py>=2.1",
        "numpy>=1.26",
        "scipy>=1.11",
        "matplotlib>=3.8",
        "sacrebleu>=2.4",
        "rouge-score>=0.1.2",
        "safetensors>=0.4",
        "tokenizers>=0.19",
    ],
    extras_require={
        # Hugging Face conversion tests and parity checks; torch is only needed here.
        "hf": ["torch>=2.1", "transformers>=4.45"],
        "test": ["pytest>=8", "pytest-xdist>=3.5", "torch>=2.1", "transformers>=4.45"],
        "gpu": ["jax[cuda12]>=0.7"],
        "tpu": ["jax[tpu]>=0.7"],
    },
)
