r"""Knowledge distillation config: a smaller student learns from a trained teacher run.

  python -m train.main --config=experiments/quickstart.py --workdir=runs/teacher
  python -m train.main --config=experiments/distill.py --workdir=runs/kd \
      --config.distill.teacher=runs/teacher --config.distill.method=logits

The student trains on the teacher's corpus with the teacher's tokenizer (a fresh student
takes it; with --init_from the tokenizers must match). method=logits: per target token
kd_weight * T^2 * D(teacher, student) + (1 - kd_weight) * cross-entropy
(train/objectives/distill.py; D: --config.distill.divergence=forward_kl|reverse_kl|jsd);
method=data: cross-entropy on real + teacher-generated rows (train/data/teacher_text.py);
method=on_policy: D on the student's own samples of the task prompts.
`get_config("tiny")` is the test size.
"""

import dataclasses

from model.config import ModelConfig
from train.config import Config, DataConfig, DistillConfig, MeshConfig, TrainConfig


def get_config(arg: str | None = None) -> Config:
  """A ~0.5M-parameter student (a quarter of the quickstart model's width per layer)."""
  config = Config(
      model=ModelConfig(vocab_size=2048, d_model=64, n_layers=2, n_heads=2, max_len=256,
                        pos_encoding="rope", norm="rms", activation="swiglu"),
      data=DataConfig(tokenizer="sentencepiece", sp_vocab_size=2048, seq_len=128,
                      max_corpus_bytes=12_000_000),
      train=TrainConfig(objective="distill", steps=300, batch_size=16, learning_rate=3e-3,
                        warmup_steps=30, log_every=20, eval_every=100, eval_batches=8,
                        checkpoint_every=100),
      distill=DistillConfig(method="logits", divergence="forward_kl", temperature=2.0,
                            kd_weight=0.5),
      mesh=MeshConfig(data=-1),
  )
  if arg == "tiny":  # for tests: seconds, not minutes
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, vocab_size=264, d_model=32, n_layers=1,
                                  n_heads=2, max_len=96),
        data=dataclasses.replace(config.data, tokenizer="byte", seq_len=32,
                                 max_corpus_bytes=300_000),
        train=dataclasses.replace(config.train, steps=2, batch_size=8, warmup_steps=1,
                                  log_every=1, eval_every=2, eval_batches=1,
                                  checkpoint_every=2, samples=0))
  return config
