"""Supervised fine-tuning: cross-entropy on response tokens only.

The batch's `weights` are 1 on response tokens (and the closing EOS) and 0 on prompt,
padding and example-boundary positions (train/data/sft.py); packed rows carry segment
ids so no attention crosses examples. Loss is summed per token and normalised once over
all response tokens of the global batch (not per example, not per micro-batch).
"""

from train.objectives import lm


def make(model, config):
  token_loss = lm.make(model, config)

  def loss(params, frozen, batch, rng, train=True):
    if "weights" not in batch:
      raise ValueError("the sft objective needs batch['weights'] (response-token mask); "
                       "use --config.data.kind=sft data")
    return token_loss(params, frozen, batch, rng, train)
  return loss
