r"""The main job: train a small model on the embedded corpus on a CPU, then sample from it.

  python -m experiments.quickstart --workdir=runs/quickstart

trains (or resumes) with the config below, prints the held-out loss and perplexity, then
decodes a few prompts from the final checkpoint. The same file is a config for the trainer:
  python -m train.main --config=experiments/quickstart.py --workdir=DIR --config.train.steps=50
"""

import dataclasses

from model.config import ModelConfig
from train.config import Config, DataConfig, MeshConfig, TrainConfig


def get_config(arg: str | None = None) -> Config:
  """A ~3M-parameter model, sentencepiece BPE on ~12 MB of stdlib source, a few CPU minutes."""
  config = Config(
      model=ModelConfig(vocab_size=2048, d_model=128, n_layers=4, n_heads=4, max_len=256,
                        pos_encoding="rope", norm="rms", activation="swiglu"),
      data=DataConfig(tokenizer="sentencepiece", sp_vocab_size=2048, seq_len=128,
                      max_corpus_bytes=12_000_000),
      train=TrainConfig(steps=300, batch_size=16, learning_rate=3e-3, warmup_steps=30,
                        log_every=20, eval_every=100, eval_batches=8, checkpoint_every=100),
      mesh=MeshConfig(data=-1),
  )
  if arg == "tiny":  # for tests: seconds, not minutes
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, vocab_size=264, d_model=32, n_layers=1,
                                  n_heads=2, max_len=64),
        data=dataclasses.replace(config.data, tokenizer="byte", seq_len=32,
                                 max_corpus_bytes=300_000),
        train=dataclasses.replace(config.train, steps=6, batch_size=8, warmup_steps=2,
                                  log_every=2, eval_every=4, eval_batches=2,
                                  checkpoint_every=4, samples=1, sample_tokens=8))
  return config
