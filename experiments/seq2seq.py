r"""Encoder-decoder (T5-style) config: the embedded number-words translation set by default.

  python -m train.main --config=experiments/seq2seq.py --workdir=runs/t5
  python -m infer.generate --workdir=runs/t5 --prompt="pt->en: trezentos e quarenta e dois" \
      --sampler=beam --num_beams=4
  python -m train.main --config=experiments/seq2seq.py --workdir=runs/t5_mine \
      --data=pairs.jsonl                       # your {"source": ..., "target": ...} lines
  python -m train.main --config=experiments/seq2seq.py:moe --workdir=runs/t5_moe
  python -m train.main --config=experiments/seq2seq.py:span --workdir=runs/t5_span  # pretrain
  python -m train.main --config=experiments/seq2seq.py --workdir=runs/t5_ft --init_from=runs/t5_span

The source goes through the bidirectional encoder, the decoder generates the target
attending to it (train/objectives/seq2seq.py: loss on target tokens only). Held-out pairs
(numbers never seen in training) are scored by experiments/architectures.py. Arguments:
"moe" (8 experts, top-2, in every layer of both stacks), "span" (T5 span-corruption
pretraining on the embedded stdlib corpus: train/data/span_corruption.py), "tiny" (tests).
"""

import dataclasses

from model.config import ModelConfig
from model.mesh import MeshConfig
from train.config import Config, DataConfig, TrainConfig


def get_config(arg: str | None = None) -> Config:
  """~1.4M parameters, byte tokens, 20k pairs over 6 directions; ~10 CPU minutes."""
  config = Config(
      model=ModelConfig(arch="encoder_decoder", vocab_size=264, d_model=128, n_layers=3,
                        n_heads=4, max_len=64),
      data=DataConfig(kind="seq2seq", data="", tokenizer="byte", seq_len=48, source_len=64,
                      seq2seq_train=20000, seq2seq_heldout=200, seq2seq_directions="all"),
      train=TrainConfig(objective="seq2seq", steps=1500, batch_size=32, learning_rate=2e-3,
                        warmup_steps=100, lr_floor=0.05, weight_decay=0.0, log_every=50,
                        eval_every=500, eval_batches=4, checkpoint_every=500, samples=0),
      mesh=MeshConfig(data=-1),
  )
  if arg == "moe":
    config = dataclasses.replace(config, model=dataclasses.replace(
        config.model, n_experts=8, experts_per_token=2, d_ff_expert=256))
  elif arg == "span":  # T5 span-corruption pretraining on the embedded corpus (plain text)
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, vocab_size=272, max_len=128),
        data=dataclasses.replace(config.data, kind="span_corruption", source_len=128,
                                 seq_len=48, max_corpus_bytes=4_000_000))
  elif arg == "tiny":  # for tests: seconds, not minutes
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, d_model=32, n_layers=1, n_heads=2),
        data=dataclasses.replace(config.data, seq2seq_train=64, seq2seq_heldout=8),
        train=dataclasses.replace(config.train, steps=4, batch_size=8, warmup_steps=1,
                                  log_every=2, eval_every=2, eval_batches=1,
                                  checkpoint_every=2))
  elif arg:
    raise ValueError(f"experiments/seq2seq.py takes 'moe', 'span' or 'tiny', got {arg!r}")
  return config
