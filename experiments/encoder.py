r"""Encoder-only (BERT-style) configs: masked-LM pretraining, then classification.

  python -m train.main --config=experiments/encoder.py --workdir=runs/bert
  python -m train.main --config=experiments/encoder.py:classify --workdir=runs/cls \
      --init_from=runs/bert --data=labelled.jsonl
  python -m infer.embed --workdir=runs/bert --input=docs.txt --out=vectors.npy

Pretraining masks 15% of the tokens of the embedded stdlib corpus (or --data) with 80/10/10
replacement (config.mlm; --config.mlm.span_mean=3 masks whole spans) and trains a
bidirectional encoder (model.arch=encoder) to predict them; its tokenizer has a [MASK]
symbol. `:classify` puts a pooled head on it (config.classify: mean or first-token
pooling) and trains on {"text", "label"} jsonl (class ids, class names or floats for
regression); without --data it uses the embedded set (which task a prompt belongs to).
With --init_from the model and tokenizer are the base run's.
Args: "" (pretrain), "classify", "tiny", "classify_tiny" (test sizes), "moe" (MoE encoder).
"""

import dataclasses

from model.config import preset
from model.mesh import MeshConfig
from train.config import ClassifyConfig, Config, DataConfig, MlmConfig, TrainConfig

ARGS = ("", "classify", "tiny", "classify_tiny", "moe")


def get_config(arg: str | None = None) -> Config:
  arg = arg or ""
  if arg not in ARGS:
    raise ValueError(f"experiments/encoder.py takes one of {ARGS[1:]} after ':', got {arg!r}")
  tiny = arg.endswith("tiny")
  model = preset("moe_encoder_tiny" if arg == "moe" else "encoder_tiny",
                 vocab_size=2048, d_model=128, n_layers=4, n_heads=4, max_len=256)
  if arg == "moe":
    model = dataclasses.replace(model, d_ff_expert=256)
  config = Config(
      model=model,
      data=DataConfig(kind="mlm", seq_len=128, max_corpus_bytes=4_000_000),
      train=TrainConfig(objective="mlm", steps=600, batch_size=32, learning_rate=1e-3,
                        warmup_steps=50, weight_decay=0.01, beta2=0.98, log_every=50,
                        eval_every=200, eval_batches=4, checkpoint_every=200, samples=0),
      mesh=MeshConfig(data=-1),
      mlm=MlmConfig())
  if arg.startswith("classify"):
    config = dataclasses.replace(
        config, head="classify", classify=ClassifyConfig(pooling="mean"),
        data=dataclasses.replace(config.data, kind="labelled", seq_len=64,
                                 sft_train_per_task=300, sft_heldout_per_task=40),
        train=dataclasses.replace(config.train, objective="classify", steps=150,
                                  learning_rate=5e-4, warmup_steps=15, eval_every=50,
                                  checkpoint_every=50))
  if tiny:  # for tests: seconds, not minutes
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, vocab_size=264, d_model=32, n_layers=1,
                                  n_heads=2, max_len=96),
        data=dataclasses.replace(config.data, tokenizer="byte", seq_len=32,
                                 max_corpus_bytes=200_000, sft_train_per_task=20,
                                 sft_heldout_per_task=4),
        train=dataclasses.replace(config.train, steps=4, batch_size=8, warmup_steps=1,
                                  log_every=2, eval_every=2, eval_batches=1,
                                  checkpoint_every=2))
  return config
