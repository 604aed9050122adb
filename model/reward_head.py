"""Scalar heads on the transformer's final hidden state: the reward model, PPO's critic.

`RewardModel(config, peft)` is the decoder-only `Transformer` plus `reward_head` (a D -> 1
projection, zero-initialised so every sequence starts at reward 0). The transformer's
parameters sit at the top level exactly as in a language model (`nn.share_scope`), so an
SFT run's parameters graft straight in and only `reward_head` is new.

  __call__(tokens_BL, last_B, ...) -> (rewards_B float32, aux)

`last_B` is the index of the position whose hidden state is read: the last token of the
response (the position that predicts the closing eos). Padding after it is never seen
(causal attention), so right-padded rows score the same as unpadded ones.
"""

import flax.linen as nn
import jax.numpy as jnp

from model.config import ModelConfig
from model.peft import PeftConfig
from model.transformer import Transformer

HEAD_PARAMS = ("reward_head", "value_head")  # always trainable, whatever the PEFT method
CRITIC_PARAMS = ("value_head",)  # training state, not part of the saved policy


class RewardModel(nn.Module):
  config: ModelConfig
  peft: PeftConfig = PeftConfig()

  def setup(self):
    self.backbone = Transformer(self.config, self.peft)
    nn.share_scope(self, self.backbone)
    self.reward_head = nn.Dense(
        1, dtype=jnp.float32, param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed", None)),
        bias_init=nn.initializers.zeros)

  def __call__(self, tokens_BL, last_B=None, positions_BL=None, *, mask=None,
               deterministic: bool = True):
    _, aux, hidden_BLD = self.backbone(tokens_BL, positions_BL, mask=mask,
                                       deterministic=deterministic, return_hidden=True)
    if last_B is None:
      last_B = jnp.full((tokens_BL.shape[0],), tokens_BL.shape[1] - 1, jnp.int32)
    h_BD = jnp.take_along_axis(hidden_BLD, last_B[:, None, None].astype(jnp.int32), axis=1)[:, 0]
    return self.reward_head(h_BD.astype(jnp.float32))[:, 0], aux


class PolicyWithValue(nn.Module):
  """The policy plus a per-token value head (PPO's critic) on the same final hidden state.

  __call__ -> (logits_BLV, values_BL float32, aux). The value head is zero-initialised and
  is not part of the policy's parameters on disk (train/step.py keeps it in the train
  state), so a PPO run decodes like any language model run.
  """
  config: ModelConfig
  peft: PeftConfig = PeftConfig()

  def setup(self):
    self.backbone = Transformer(self.config, self.peft)
    nn.share_scope(self, self.backbone)
    self.value_head = nn.Dense(
        1, dtype=jnp.float32, param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed", None)),
        bias_init=nn.initializers.zeros)

  def __call__(self, tokens_BL, positions_BL=None, *, mask=None, deterministic: bool = True):
    logits_BLV, aux, hidden_BLD = self.backbone(tokens_BL, positions_BL, mask=mask,
                                                deterministic=deterministic, return_hidden=True)
    return logits_BLV, self.value_head(hidden_BLD.astype(jnp.float32))[..., 0], aux


def last_index(weights_BL):
  """Index of each row's last weighted target position (-> the last response token).

  Rows without any weight give 0 (their pairs carry no weight in the loss)."""
  length = weights_BL.shape[1]
  positions_BL = jnp.arange(length)[None, :]
  return jnp.max(jnp.where(weights_BL > 0, positions_BL, 0), axis=1).astype(jnp.int32)
