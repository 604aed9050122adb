r"""Reward-model config: a scalar head on an SFT model, Bradley-Terry loss on preference pairs.

  python -m train.main --config=experiments/reward.py --workdir=runs/rm --init_from=runs/sft_full
  python -m infer.generate --workdir=runs/sft_full --sampler=best_of_n --n=8 --scorer=runs/rm \
      --prompt="What is 7 + 5?"

The run directory records head="reward" in config.json, so infer/reward.py loads it as a
scorer. Held-out pairs (prompts never trained on) give val_reward_accuracy.
`get_config("tiny")` is the test size.
"""

import dataclasses

from experiments import sft
from train.config import Config, RlConfig


def get_config(arg: str | None = None) -> Config:
  config = sft.get_config(arg)
  tiny = arg == "tiny"
  return dataclasses.replace(
      config,
      head="reward",
      data=dataclasses.replace(config.data, kind="preference", pack=False,
                               pref_train_per_task=40 if tiny else 400,
                               pref_heldout_per_task=4 if tiny else 20),
      train=dataclasses.replace(config.train, objective="reward", task_eval_examples=0,
                                learning_rate=1e-3 if tiny else 3e-4,
                                steps=config.train.steps if tiny else 300),
      rl=RlConfig(reward_margin=0.0))
