"""Pooling an encoder's final hidden states, and a classification / regression head on it.

`pool(hidden_BLD, valid_BL, pooling)` gives one vector per row: "first" reads the first
token (the bos / [CLS] position), "mean" averages the non-padding tokens. Sentence
embeddings (infer/embed.py) and the classifier use the same function.

`Classifier(config, peft, n_labels, pooling)` is the `Transformer` (its parameters at the
top level, `nn.share_scope`, so a masked-LM run's parameters graft straight in) plus
`classify_head`, a D -> n_labels projection (n_labels = 1 for regression), zero-initialised
so training starts from uniform class probabilities.

  __call__(tokens_BL, segment_ids_BL=None, ...) -> (outputs_BN float32, aux)

segment_ids_BL: 1 for tokens, 0 for padding (None = no padding); padding is masked from
attention and from mean pooling.
"""

import flax.linen as nn
import jax.numpy as jnp

from model.attention import Mask
from model.config import ModelConfig
from model.peft import PeftConfig
from model.quant import QuantConfig
from model.transformer import Transformer

POOLINGS = ("mean", "first")
CLASSIFY_PARAMS = ("classify_head",)  # always trainable, whatever the PEFT method


def pool(hidden_BLD, valid_BL, pooling: str):
  """[B, D] float32: the first token's state, or the mean over valid (non-padding) tokens."""
  if pooling not in POOLINGS:
    raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
  hidden_BLD = hidden_BLD.astype(jnp.float32)
  if pooling == "first":
    return hidden_BLD[:, 0]
  w_BL = valid_BL.astype(jnp.float32)
  return jnp.einsum("bld,bl->bd", hidden_BLD, w_BL) / jnp.maximum(w_BL.sum(1, keepdims=True), 1.0)


def encoder_mask(segment_ids_BL):
  return Mask.bidirectional(None if segment_ids_BL is None else segment_ids_BL)


class Classifier(nn.Module):
  config: ModelConfig
  peft: PeftConfig = PeftConfig()
  n_labels: int = 2
  pooling: str = "mean"
  quant: QuantConfig = QuantConfig()

  def setup(self):
    if self.n_labels < 1:
      raise ValueError(f"n_labels must be >= 1, got {self.n_labels}")
    self.backbone = Transformer(self.config, self.peft, self.quant)
    nn.share_scope(self, self.backbone)
    self.classify_head = nn.Dense(
        self.n_labels, dtype=jnp.float32, param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed", None)),
        bias_init=nn.initializers.zeros)

  def __call__(self, tokens_BL, segment_ids_BL=None, *, deterministic: bool = True):
    _, aux, hidden_BLD = self.backbone(tokens_BL, mask=encoder_mask(segment_ids_BL),
                                       deterministic=deterministic, return_hidden=True)
    valid_BL = (jnp.ones(tokens_BL.shape, bool) if segment_ids_BL is None
                else segment_ids_BL > 0)
    return self.classify_head(pool(hidden_BLD, valid_BL, self.pooling)), aux
