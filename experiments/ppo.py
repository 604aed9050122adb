r"""PPO (RLHF) config: a value head on the policy, rewards from a reward model (or the tasks).

  python -m train.main --config=experiments/ppo.py --workdir=runs/ppo \
      --init_from=runs/sft_full --config.rl.reward_model=runs/rm
  python -m train.main --config=experiments/ppo.py --workdir=runs/ppo_task \
      --init_from=runs/sft_full --config.rl.reward=task

Per reply token the reward is -kl_coef * KL to the frozen --init_from model (k1 or k3,
--config.rl.kl_estimator; adaptive with --config.rl.kl_target > 0) plus the score on the
last token; GAE (gamma, lam), whitened advantages, clipped ratio and clipped values; each
rollout of minibatches x batch_size samples serves updates_per_rollout epochs. The critic
is saved in the train state, not with the policy: the run directory decodes like any
other. `get_config("tiny")` is the test size.
"""

import dataclasses

from experiments import sft
from train.config import Config, RlConfig


def get_config(arg: str | None = None) -> Config:
  config = sft.get_config(arg)
  tiny = arg == "tiny"
  return dataclasses.replace(
      config,
      head="value",
      data=dataclasses.replace(config.data, kind="rollout", pack=False),
      train=dataclasses.replace(config.train, objective="ppo",
                                learning_rate=1e-3 if tiny else 5e-5,
                                steps=config.train.steps if tiny else 100,
                                warmup_steps=1 if tiny else 5, grad_clip=1.0,
                                eval_every=config.train.eval_every if tiny else 50),
      rl=RlConfig(reward="model", group_size=1, clip_eps=0.2, kl_coef=0.05, kl_target=0.0,
                  kl_estimator="k1", gamma=1.0, lam=0.95, vf_coef=0.1, vf_clip=0.2,
                  max_new_tokens=8 if tiny else 16, updates_per_rollout=2, minibatches=1))
