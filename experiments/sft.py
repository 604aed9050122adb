r"""Supervised fine-tuning config: the embedded instruction tasks (or --data=my.jsonl).

  python -m train.main --config=experiments/sft.py --workdir=runs/sft_full \
      --init_from=runs/quickstart
  python -m train.main --config=experiments/sft.py --workdir=runs/sft_lora \
      --init_from=runs/quickstart --config.peft.method=lora --config.peft.rank=8

With --init_from the model and tokenizer are the base run's (the model section below only
applies to a run from scratch). The loss is on response tokens only; examples are packed
several per row with segment ids (prompt tuning turns packing off by itself); exact match
per held-out task is measured every eval_every steps and at the end.
`get_config("tiny")` is the test size.
"""

import dataclasses

from model.config import ModelConfig
from model.mesh import MeshConfig
from model.peft import PeftConfig
from train.config import Config, DataConfig, TrainConfig


def get_config(arg: str | None = None) -> Config:
  config = Config(
      model=ModelConfig(vocab_size=2048, d_model=128, n_layers=4, n_heads=4, max_len=256),
      peft=PeftConfig(method="full", rank=8, alpha=16.0, targets="attention_mlp"),
      data=DataConfig(kind="sft", data="", chat_template="qa", pack=True, seq_len=128,
                      sft_train_per_task=2000, sft_heldout_per_task=40),
      train=TrainConfig(objective="sft", steps=300, batch_size=16, learning_rate=1e-3,
                        warmup_steps=20, lr_floor=0.1, weight_decay=0.0, log_every=20,
                        eval_every=100, eval_batches=4, checkpoint_every=100,
                        task_eval_examples=20, task_eval_tokens=16, samples=0),
      mesh=MeshConfig(data=-1),
  )
  if arg == "tiny":  # for tests: seconds, not minutes
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, vocab_size=264, d_model=32, n_layers=1,
                                  n_heads=2, max_len=96),
        data=dataclasses.replace(config.data, tokenizer="byte", seq_len=64,
                                 sft_train_per_task=40, sft_heldout_per_task=4),
        train=dataclasses.replace(config.train, steps=4, batch_size=8, warmup_steps=1,
                                  log_every=2, eval_every=2, eval_batches=1,
                                  checkpoint_every=2, task_eval_examples=2,
                                  task_eval_tokens=6))
  return config
