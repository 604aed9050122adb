r"""DPO-family config: preference pairs from the embedded tasks (or --data=pairs.jsonl).

  python -m train.main --config=experiments/dpo.py --workdir=runs/dpo --init_from=runs/sft_full
  python -m train.main --config=experiments/dpo.py --workdir=runs/ipo --init_from=runs/sft_full \
      --config.rl.loss=ipo                  # or simpo (reference-free), --config.rl.beta=...
  python -m train.main --config=experiments/dpo.py --workdir=runs/dpo_lora \
      --init_from=runs/sft_full --config.peft.method=lora   # reference = the LoRA-off base

The reference is the --init_from model, frozen. `get_config("tiny")` is the test size.
"""

import dataclasses

from experiments import sft
from train.config import Config, RlConfig


def get_config(arg: str | None = None) -> Config:
  config = sft.get_config(arg)
  tiny = arg == "tiny"
  return dataclasses.replace(
      config,
      data=dataclasses.replace(config.data, kind="preference", pack=False,
                               pref_train_per_task=40 if tiny else 400,
                               pref_heldout_per_task=4 if tiny else 20),
      train=dataclasses.replace(config.train, objective="dpo",
                                learning_rate=1e-3 if tiny else 2e-4,
                                steps=config.train.steps if tiny else 200, warmup_steps=1 if tiny else 10),
      rl=RlConfig(loss="dpo", beta=0.1, label_smoothing=0.0))
