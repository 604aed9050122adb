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


_PROMPTS = ("def fibonacci(n):", "import os\n", "class Stack:\n    def push(self, item):")


def _main(argv):
  """Trains (or resumes) the quickstart run, then decodes with three sampling presets."""
  del argv
  import json

  from absl import flags, logging

  from infer import cli, sampling
  from infer.decode import Decoder
  from infer.loading import load_model
  from train.config import apply_overrides
  from train.loop import train

  cli.quiet_library_logs()
  workdir = flags.FLAGS.workdir
  config = apply_overrides(get_config(), _OVERRIDES)
  summary = train(config, workdir)
  loaded = load_model(workdir)
  decoder = Decoder(loaded.model_config, loaded.mesh, loaded.peft, loaded.quant)
  tokenizer = loaded.tokenizer
  prompt_ids = [tokenizer.encode(p) for p in _PROMPTS[:max(1, config.train.samples)]]
  print("=" * 72)
  print(f"held-out loss {summary['val_loss']:.4f}, perplexity {summary['val_perplexity']:.2f} "
        f"after {summary['step']} steps ({summary['params']:,} parameters)")
  for preset in ("code", "chat", "creative"):
    params_sampling = sampling.params_from_preset(len(prompt_ids), preset)
    result = decoder.generate(loaded.params, prompt_ids, config.train.sample_tokens,
                              params_sampling, seed=0, eos_id=tokenizer.eos_id)
    for prompt, tokens in zip(_PROMPTS, result.tokens):
      print("-" * 72 + f"\n[{preset}] " + prompt + tokenizer.decode(tokens))
  logging.info("summary: %s", json.dumps(summary))


_OVERRIDES = []


def main():
  import sys

  from absl import app, flags

  from train.config import split_config_overrides
  flags.DEFINE_string("workdir", "runs/quickstart", "Run directory (resumed if it exists).")
  global _OVERRIDES
  argv, _OVERRIDES = split_config_overrides(sys.argv)
  app.run(_main, argv=argv)


if __name__ == "__main__":
  main()
