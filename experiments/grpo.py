r"""GRPO config: on-policy samples on the embedded tasks, rewarded by their checker.

  python -m train.main --config=experiments/grpo.py --workdir=runs/grpo \
      --init_from=runs/sft_full --config.rl.reward=task          # verifiable reward
  python -m train.main --config=experiments/grpo.py --workdir=runs/grpo_rm \
      --init_from=runs/sft_full --config.rl.reward=model --config.rl.reward_model=runs/rm

train.batch_size = prompts per step x rl.group_size. rl.kl_beta > 0 adds a k3 KL to the
frozen --init_from model (0 loads no reference). `get_config("tiny")` is the test size.
"""

import dataclasses

from experiments import sft
from train.config import Config, RlConfig


def get_config(arg: str | None = None) -> Config:
  config = sft.get_config(arg)
  tiny = arg == "tiny"
  return dataclasses.replace(
      config,
      data=dataclasses.replace(config.data, kind="rollout", pack=False),
      train=dataclasses.replace(config.train, objective="grpo",
                                learning_rate=1e-3 if tiny else 1e-4,
                                steps=config.train.steps if tiny else 100,
                                warmup_steps=1 if tiny else 5, grad_clip=1.0,
                                eval_every=config.train.eval_every if tiny else 50),
      rl=RlConfig(group_size=4, clip_eps=0.2, kl_beta=0.0 if tiny else 0.02, reward="task",
                  max_new_tokens=8 if tiny else 16, temperature=1.0, updates_per_rollout=1))
